"""Datasets of a run from its :class:`DataConfig`, through the data module's readers, datasets and transforms.

Training samples carry how many unreadable videos were skipped to produce them and why (counted in the worker
that skipped them, summed by the training loop over all workers, which applies ``data.max_fail_fraction``);
evaluation never substitutes a sample: an unreadable video is left out and counted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import (Annotations, CompressedTransform, CompressedVideoDataset, DatasetFailure, VideoDataset,
                    VideoReadError, VideoRecord, VideoTransform, read_csv, read_epic_kitchens, read_folder, read_hmdb51,
                    read_kinetics, read_ssv2, read_ucf101)
from ..data.batch import Batch, with_views
from .config import Config, ConfigError, DataConfig


def _resolve(root: Path, spec: str) -> Path:
    p = Path(spec)
    return p if p.is_absolute() else root / p


def read_split(data: DataConfig, split: str, classes: list[str] | None = None) -> Annotations:
    """Annotations of ``split`` ("train" or "val") in the configured format; paths are checked up front."""
    root = Path(data.root)
    if not root.is_dir():
        raise ConfigError(f"data.root: dataset folder {root} does not exist")
    spec = getattr(data, split)
    annotations = _resolve(root, data.annotations) if data.annotations else root
    fmt = data.format
    if fmt in ("ucf101", "hmdb51"):
        try:
            number = int(spec)
        except ValueError:
            raise ConfigError(f"data.{split}: {fmt} takes a split number 1-3, got {spec!r}") from None
        reader = read_ucf101 if fmt == "ucf101" else read_hmdb51
        ann = reader(annotations, root, split=number, train=split == "train")
    elif fmt == "kinetics":
        ann = read_kinetics(_resolve(root, spec), root, classes)
    elif fmt == "ssv2":
        labels = annotations if annotations.suffix == ".json" else annotations / "labels.json"
        ann = read_ssv2(labels, _resolve(root, spec), root)
    elif fmt == "epic":
        ann = read_epic_kitchens(_resolve(root, spec), root)
    elif fmt == "csv":  # video paths are relative to the CSV's own folder, never to data.root
        ann = read_csv(_resolve(root, spec), classes=classes)
    else:
        ann = read_folder(_resolve(root, spec))
    if not ann.records:
        where = f"; relative paths are read from the CSV's folder {Path(ann.source).parent}" if fmt == "csv" else ""
        raise ConfigError(f"data.{split}: no readable records in {ann.source or spec} "
                          f"({ann.missing} listed videos missing{where})")
    return ann


def head_sizes(classes: list[str] | dict[str, list[str]]) -> list[int]:
    """Classifier outputs per head: one head, or Epic-Kitchens verb and noun heads on one model."""
    if isinstance(classes, dict):
        return [len(v) for v in classes.values()]
    return [len(classes)]


def check_labels(ann: Annotations, heads: Sequence[int], split: str) -> None:
    """Every label inside its head's class list (a label outside the list fails before training)."""
    for r in ann.records:
        labels = r.label if isinstance(r.label, tuple) else (r.label,)
        if len(labels) != len(heads) or any(not 0 <= l < n for l, n in zip(labels, heads)):
            raise ConfigError(f"data.{split}: {r.path}: label {r.label} outside the class list "
                              f"(heads of {list(heads)} classes)")


def video_dataset(cfg: Config, records: Sequence[VideoRecord], model: nn.Module, train: bool,
                  num_clips: int = 1, num_crops: int = 1) -> VideoDataset | CompressedVideoDataset:
    """The samples ``model.input_spec`` asks for: RGB clips following its preprocessing (sampler, stride, short
    side, mean / std; see ``engine.model``), or compressed-domain samples of its modalities
    (``data.input=compressed``), at its frames and size; test mode gives ``num_clips`` x ``num_crops`` views.
    The dataset itself never gives up on unreadable videos (a DataLoader worker sees only its share of them):
    the training loop counts them over all workers and applies ``data.max_fail_fraction``."""
    d, spec = cfg.data, model.input_spec
    if spec.compressed:
        if num_clips != 1:
            raise ConfigError(f"compressed input samples one TSN clip per video (views 1xS), got {num_clips} clips")
        transform = CompressedTransform(size=spec.img_size, train=train, flip=d.flip_prob > 0,
                                        min_scale=d.min_scale, max_scale=d.max_scale, three_crop=num_crops == 3)
        return CompressedVideoDataset(records, num_segments=spec.num_frames, train=train, transform=transform,
                                      audio="audio" in spec.modalities, audio_weights=d.audio_weights or None,
                                      max_fail_fraction=1.0, seed=cfg.train.seed)
    pre = spec.preprocessing
    if train:
        transform = VideoTransform(size=pre.img_size, train=True, mean=pre.mean, std=pre.std, **d.augment())
    else:
        transform = VideoTransform(size=pre.img_size, train=False, three_crop=num_crops == 3,
                                   short_side=pre.short_side, mean=pre.mean, std=pre.std)
    return VideoDataset(records, num_frames=pre.num_frames, sampler=pre.sampler, stride=pre.stride, train=train,
                        num_clips=num_clips, transform=transform, max_fail_fraction=1.0, seed=cfg.train.seed)


class CountingDataset(Dataset):
    """``(inputs, label, skipped, error)``: how many unreadable videos the base dataset skipped for this item and
    the last one's error ("" when none); ``inputs`` and ``label`` are None when no video of the dataset is
    readable. Expected data failures thus reach the training loop as counts, never as a worker exception."""

    def __init__(self, base: VideoDataset | CompressedVideoDataset, indices: Sequence[int]) -> None:
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        before = self.base.stats.failures
        try:
            inputs, label = self.base.split(self.base[self.indices[i]])
        except DatasetFailure:
            inputs = label = None
        skipped = self.base.stats.failures - before
        return inputs, label, skipped, self.base.stats.last_error if skipped else ""


def collate_counted(batch) -> tuple[Batch | None, torch.Tensor, list[str]]:
    """``(batch, skipped (B,), errors)`` of :class:`CountingDataset` items; the batch is None when an item found
    no readable video."""
    skipped = torch.tensor([b[2] for b in batch])
    errors = [b[3] for b in batch if b[3]]
    if any(b[0] is None for b in batch):
        return None, skipped, errors
    return Batch.collate([b[:2] for b in batch]), skipped, errors


class EvalItems(Dataset):
    """``(inputs with V views (see with_views), label, index, error)``: no substitution; an unreadable video
    gives no inputs and its error message, so it is counted as skipped and never scored."""

    def __init__(self, base: VideoDataset | CompressedVideoDataset, num_views: int) -> None:
        self.base, self.num_views = base, num_views

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        record = self.base.records[i]
        try:
            inputs, label = self.base.split(self.base.load(i))
        except (VideoReadError, ValueError, OSError) as err:
            return None, torch.tensor(record.label), i, str(err)
        return with_views(inputs, self.num_views), label, i, ""

    def collate(self, batch) -> tuple[Batch | None, list[tuple[int, str]]]:
        """The readable items as one :class:`Batch` of ``num_views`` views (None when there is none), and the
        ``(index, error)`` of the unreadable ones."""
        good = [b for b in batch if not b[3]]
        bad = [(b[2], b[3]) for b in batch if b[3]]
        if not good:
            return None, bad
        return Batch.collate([b[:2] for b in good], [b[2] for b in good], self.num_views), bad
