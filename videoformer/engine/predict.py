"""Trained runs at test time: ``load_run`` (a run directory or checkpoint -> config, model, classes; any other
pretrained source ``load_pretrained`` reads -- an official release file, a Hugging Face or exported directory --
gives a run whose data section comes from the command line),
``evaluate_run`` (multi-view testing of the run's validation split) and ``predict_files`` (class scores of
video files, each unreadable file reported on its own)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..data import VideoRecord
from ..weights import load_pretrained
from ..weights.common import CheckpointError, load_checked
from ..weights.pretrained import read_source
from .checkpoint import checkpoint_path
from .config import Config, ConfigError, apply_override, config_from_dict, validate
from .data import EvalItems, check_labels, read_split, video_dataset
from .distributed import pick_device
from .evaluate import EvalResult, EvaluationError, check_scores, eval_precision, evaluate, predict_scores
from .model import LEGACY_PREPROCESSING, build_model, record_model, resolve_preprocessing
from .threads import set_threads


@dataclass
class LoadedRun:
    cfg: Config
    model: nn.Module
    classes: list[str] | dict[str, list[str]]
    heads: list[int]
    source: str
    device: torch.device
    note: str = ""  # which checkpoint this is and how it was chosen (printed by `eval`)

    def __post_init__(self) -> None:
        eval_precision(self.cfg, self.device)  # fp16 without a GPU fails on loading, before any video is read

    @property
    def precision(self) -> str:
        """The autocast of its forward passes: ``eval.precision``, else ``train.precision``."""
        return eval_precision(self.cfg, self.device)

    @property
    def head_names(self) -> list[str]:
        return list(self.classes) if isinstance(self.classes, dict) else ["class"]

    @property
    def class_lists(self) -> list[list[str]]:
        return list(self.classes.values()) if isinstance(self.classes, dict) else [self.classes]


def parse_views(text: str) -> tuple[int, int]:
    """``"4x3"`` -> (4 temporal clips, 3 spatial crops)."""
    try:
        k, s = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--views: expected KxS such as 4x3, got {text!r}") from None
    if k < 1 or s not in (1, 3):
        raise ConfigError(f"--views: K must be >= 1 and S 1 or 3, got {text!r}")
    return k, s


def load_run(path: str | os.PathLike, overrides: Sequence[str] = (), checkpoint: str = "best") -> LoadedRun:
    """The model of a run directory (its ``checkpoint``: ``best``, else ``last``; or ``last``) or of a
    checkpoint file, in eval mode on the configured device, with the run's config plus ``key=value`` overrides
    (e.g. ``data.val=...``). Any other source ``load_pretrained`` reads runs with a default config (its data
    section from the overrides), the weights' preprocessing and class names (``0``, ``1``, ... when the file
    has none)."""
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint: expected best or last, got {checkpoint!r}")
    p = Path(path)
    if p.is_dir() and (p / "checkpoints").is_dir():
        best = checkpoint_path(p, "best")
        p = best if checkpoint == "best" and best.is_file() else checkpoint_path(p, "last")
        if not p.is_file():
            raise ConfigError(f"{path}: no checkpoint yet ({p} does not exist); train the run first")
    state, source = read_source(p)
    if not (isinstance(state, dict) and "model" in state and "config" in state):
        return _load_pretrained_run(p, overrides)
    cfg = config_from_dict(state["config"], source)
    if "preprocessing" not in state["config"].get("model", {}):  # saved before weights carried preprocessing
        cfg.model.preprocessing = dict(LEGACY_PREPROCESSING)
    for override in overrides:
        apply_override(cfg, override)
    validate(cfg)
    model = build_model(cfg.model, sum(state["heads"]))
    load_checked(model, state["model"], source)
    model.preprocessing = resolve_preprocessing(model, cfg)
    device = pick_device(cfg.train.device)
    set_threads(cfg.train.threads, cfg.data.num_workers)
    return LoadedRun(cfg, model.to(device).eval(), state["classes"], list(state["heads"]), source, device,
                     checkpoint_note(p, state))


def checkpoint_note(path: Path, state: dict[str, Any]) -> str:
    """Which training checkpoint ``path`` is: ``best.pt`` was chosen by validation top-1 on ``data.val``, so
    its score on that split is optimistic; ``last.pt`` holds the latest epoch."""
    progress = state.get("progress", {})
    epochs = dict(state.get("config", {}).get("train", {})).get("epochs")
    done = f"epoch {progress.get('epoch', '?')} of {epochs}" if epochs else f"epoch {progress.get('epoch', '?')}"
    if path.name == "best.pt":
        top1 = progress.get("best_top1")
        return (f"best.pt ({done}, validation top-1 {top1:.4f}): the epoch with the best top-1 on the validation "
                "split (data.val), so a score on that split is optimistic; --checkpoint last scores the final "
                "weights" if isinstance(top1, float) else f"best.pt ({done})")
    if path.name == "last.pt":
        return f"last.pt ({done}{', mid-epoch' if progress.get('step') else ''}): the latest weights"
    return done


def _load_pretrained_run(path: Path, overrides: Sequence[str]) -> LoadedRun:
    try:
        model = load_pretrained(path)
    except CheckpointError as err:
        raise CheckpointError(f"{path} is neither a videoformer run nor a pretrained model: {err}") from None
    cfg = Config()
    cfg.model.name = model.registry_name
    if model.input_spec.compressed:  # MM-ViT reads the compressed domain (MPEG-4 re-encodes)
        cfg.data.input = "compressed"
    for override in overrides:
        apply_override(cfg, override)
    validate(cfg)
    model.preprocessing = resolve_preprocessing(model, cfg)
    record_model(cfg, model)
    classes = model.classes or [str(i) for i in range(model.cfg.num_classes)]
    heads = [len(v) for v in classes.values()] if isinstance(classes, dict) else [len(classes)]
    device = pick_device(cfg.train.device)
    set_threads(cfg.train.threads, cfg.data.num_workers)
    return LoadedRun(cfg, model.to(device).eval(), classes, heads, str(path), device)


def evaluate_run(run: LoadedRun, num_clips: int | None = None, num_crops: int | None = None,
                 shuffle_seed: int | None = None, progress: bool = False) -> EvalResult:
    """Multi-view test of ``data.val``; ``skipped`` counts listed videos that are missing or unreadable."""
    cfg = run.cfg
    k, s = num_clips or cfg.eval.num_clips, num_crops or cfg.eval.num_crops
    ann = read_split(cfg.data, "val", run.classes if isinstance(run.classes, list) else None)
    check_labels(ann, run.heads, "val")
    dataset = video_dataset(cfg, ann.records, run.model, train=False, num_clips=k, num_crops=s)
    result = evaluate(run.model, dataset, run.heads, k, s, cfg.eval.batch_size, run.device, run.precision,
                      shuffle_seed, cfg.data.num_workers, progress, source=run.source)
    result.skipped += ann.missing
    return result


def predict_files(run: LoadedRun, paths: Sequence[str], num_clips: int | None = None,
                  num_crops: int | None = None, topk: int = 5) -> list[dict[str, Any]]:
    """Per file ``{"path", "predictions": {head: [{"class", "score"}, ...]}}`` (softmax averaged over the
    views), or ``{"path", "error"}`` for a file that is missing or cannot be decoded, or whose scores are NaN /
    inf (never printed as scores)."""
    cfg = run.cfg
    k, s = num_clips or cfg.eval.num_clips, num_crops or cfg.eval.num_crops
    labels = tuple(-1 for _ in run.heads) if len(run.heads) > 1 else -1
    records = [VideoRecord(os.fspath(p), labels) for p in paths]
    items = EvalItems(video_dataset(cfg, records, run.model, train=False, num_clips=k, num_crops=s), k * s)
    out = []
    for i, path in enumerate(paths):
        if not os.path.isfile(path):
            out.append({"path": str(path), "error": "file not found"})
            continue
        batch, bad = items.collate([items[i]])
        if bad:
            out.append({"path": str(path), "error": bad[0][1]})
            continue
        scores = predict_scores(run.model, batch, run.heads, run.device, run.precision)
        try:
            check_scores(scores, [str(path)], run.source)
        except EvaluationError as err:
            out.append({"path": str(path), "error": str(err)})
            continue
        preds = {}
        for name, names, sc in zip(run.head_names, run.class_lists, scores):
            top = sc[0].topk(min(topk, len(names)))
            preds[name] = [{"class": names[j], "score": float(v)} for v, j in zip(top.values, top.indices.tolist())]
        out.append({"path": str(path), "predictions": preds})
    return out


def rollout_run(run: LoadedRun, video: str, out_dir: str, head_fusion: str = "mean") -> list[str]:
    """``videoformer rollout RUN VIDEO``: attention-rollout overlays of ``run`` 's model on one test view of
    ``video`` (the run's own sampling, preprocessing and centre crop); returns the PNG paths."""
    from ..analysis.rollout import attention_rollout, save_overlays

    records = [VideoRecord(os.fspath(video), tuple(-1 for _ in run.heads) if len(run.heads) > 1 else -1)]
    views, _, _, error = EvalItems(video_dataset(run.cfg, records, run.model, train=False, num_clips=1,
                                                 num_crops=1), 1)[0]
    if error:
        raise ConfigError(f"{video}: {error}")
    spec = run.model.input_spec
    inputs = spec.select({m: v.to(run.device) for m, v in views.items()})
    # compressed domain: {modality: (1, T, ...)}, drawn as they are; RGB: the (1, C, T, H, W) clip as frames
    frames = inputs if spec.compressed else {"video": inputs.transpose(1, 2)}
    maps = attention_rollout(run.model, inputs, head_fusion)
    name = run.cfg.model.name
    return save_overlays(maps, {k: v.cpu() for k, v in frames.items()}, out_dir, f"{name}_{Path(video).stem}")
