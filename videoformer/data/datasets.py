"""Map-style datasets over :class:`~videoformer.data.annotations.VideoRecord` lists.

Both datasets are safe in DataLoader workers: they hold only paths (each ``__getitem__`` opens its
own container), and an unreadable video is logged, counted and replaced by another sample instead of
raising - until more than ``max_fail_fraction`` of the samples this process has tried were bad
(counts are per process, i.e. per worker), which then raises :class:`DatasetFailure`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from videoformer.data.annotations import VideoRecord
from videoformer.data.batch import COMPRESSED, RGB
from videoformer.data.compressed import extract_compressed
from videoformer.data.errors import VideoReadError, warn_once
from videoformer.data.prepare import verify_cached
from videoformer.data.sampling import dense_indices, uniform_indices
from videoformer.data.video import FrameIndex, frame_index, read_clip

log = logging.getLogger(__name__)

__all__ = ["VideoDataset", "CompressedVideoDataset", "DatasetFailure", "SkipStats"]


class DatasetFailure(RuntimeError):
    """Too many unreadable samples: the dataset (or its storage) is broken, not just a few files."""


@dataclass
class SkipStats:
    attempts: int = 0
    failures: int = 0
    last_error: str = ""


class _SkippingDataset(Dataset):
    def __init__(self, records: Sequence[VideoRecord], max_fail_fraction: float = 0.1, min_attempts: int = 20,
                 seed: int | None = None) -> None:
        if not records:
            raise ValueError("dataset has no records (all videos missing?)")
        self.records = list(records)
        self.max_fail_fraction = max_fail_fraction
        self.min_attempts = min_attempts
        self.seed = seed
        self.stats = SkipStats()
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Vary the random sampling per epoch when a ``seed`` is set (reproducible augmentation)."""
        self._epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, self._epoch, index])

    def _load(self, record: VideoRecord, rng: np.random.Generator):
        raise NotImplementedError

    def _read(self, record: VideoRecord, rng: np.random.Generator):
        verify_cached(record.path)  # a damaged `videoformer extract` cache file is unreadable (CacheError)
        return self._load(record, rng)

    def load(self, index: int):
        """Sample ``index`` itself, or the ``VideoReadError`` / ``ValueError`` / ``OSError`` that makes it
        unreadable: no replacement (evaluation must not score one video twice)."""
        return self._read(self.records[index], self._rng(index))

    def __getitem__(self, index: int):
        n = len(self.records)
        for k in range(n):
            i = (index + k * 7919) % n  # a fixed, well-spread probe sequence of replacement samples
            record = self.records[i]
            self.stats.attempts += 1
            try:
                return self._read(record, self._rng(i))
            except (VideoReadError, ValueError, OSError) as e:
                self.stats.failures += 1
                self.stats.last_error = str(e)
                log.warning("skipping unreadable sample %d (%s): %s [%d/%d failed]", i, record.path, e,
                            self.stats.failures, self.stats.attempts)
                if (self.stats.attempts >= self.min_attempts
                        and self.stats.failures > self.max_fail_fraction * self.stats.attempts):
                    raise DatasetFailure(
                        f"{self.stats.failures} of {self.stats.attempts} samples unreadable (more than "
                        f"{self.max_fail_fraction:.0%}); last: {e}") from e
        raise DatasetFailure(f"no readable sample among {n} records; last error: {self.stats.last_error}")


def _frame_range(record: VideoRecord, index: FrameIndex) -> tuple[int, int]:
    """[first, stop) frames of the record's segment within the video (times in seconds map to the
    frames shown then, by presentation timestamps)."""
    num_frames = index.num_frames
    lo, hi = 0, num_frames
    if record.start_frame is not None:
        lo, hi = record.start_frame, record.stop_frame if record.stop_frame is not None else num_frames
    elif record.start is not None:
        lo = int(index.index_at(record.start))
        hi = int(index.index_at(record.end)) if record.end is not None else num_frames
    lo, hi = max(0, min(lo, num_frames - 1)), max(1, min(hi, num_frames))
    return lo, max(hi, lo + 1)


def _label(record: VideoRecord) -> torch.Tensor:
    return torch.tensor(record.label, dtype=torch.long)


class VideoDataset(_SkippingDataset):
    """RGB clips: returns ``(clip, label)`` with clip uint8 (3, T, H, W) or ``transform(clip, rng)``.

    ``sampler="uniform"``: TSN segments (``num_frames`` of them); ``"dense"``: ``num_frames`` frames
    ``stride`` apart. Test mode with ``num_clips > 1`` returns all temporal clips stacked (K, 3, T, H, W)
    (or transformed) for multi-view evaluation; ``short_side`` scales frames while decoding. With ``VideoTransform(three_crop=True)`` the K x 3
    views come flattened, clip-major: (K * 3, 3, T, size, size).
    """

    def __init__(self, records: Sequence[VideoRecord], num_frames: int = 8, sampler: Literal["uniform", "dense"] = "dense",
                 stride: int = 4, train: bool = True, num_clips: int = 1,
                 transform: Callable[[torch.Tensor, np.random.Generator], torch.Tensor] | None = None,
                 overflow: Literal["pad", "loop"] = "pad", short_side: int | None = None, **kw) -> None:
        super().__init__(records, **kw)
        self.short_side = short_side
        if sampler not in ("uniform", "dense"):
            raise ValueError(f"sampler must be 'uniform' or 'dense', got {sampler!r}")
        self.num_frames, self.sampler, self.stride = num_frames, sampler, stride
        self.train, self.num_clips, self.transform, self.overflow = train, num_clips, transform, overflow

    @staticmethod
    def split(sample: tuple[torch.Tensor, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``({"rgb": clip}, label)`` of a sample: the model inputs of a :class:`~videoformer.data.batch.Batch`."""
        clip, label = sample
        return {RGB: clip}, label

    def clip_indices(self, num_frames: int, rng: np.random.Generator, clip_idx: int = 0) -> np.ndarray:
        if self.sampler == "uniform":
            return uniform_indices(num_frames, self.num_frames, self.train, rng)
        return dense_indices(num_frames, self.num_frames, self.stride, self.train, rng, clip_idx,
                             1 if self.train else self.num_clips, self.overflow)

    def _load(self, record: VideoRecord, rng: np.random.Generator):
        lo, hi = _frame_range(record, frame_index(record.path))  # cached: the file is opened once, by read_clip
        clips = 1 if self.train else self.num_clips
        idx = np.stack([lo + self.clip_indices(hi - lo, rng, k) for k in range(clips)])  # (K, T)
        frames = torch.from_numpy(read_clip(record.path, idx.reshape(-1), short_side=self.short_side))  # (K*T, H, W, 3)
        views = frames.reshape(clips, self.num_frames, *frames.shape[1:]).permute(0, 4, 1, 2, 3)  # (K, 3, T, H, W)
        if self.transform is not None:
            views = torch.stack([self.transform(v, rng) for v in views])
            if views.dim() == 6:  # transform made spatial views: (K, S, 3, T, h, w) -> (K * S, 3, T, h, w)
                return views.flatten(0, 1), _label(record)
        return (views[0] if clips == 1 else views), _label(record)


def check_compressed_source(path: str) -> None:
    """Warn (once per process) when ``path`` is not what ``videoformer extract`` writes: MPEG-4 without
    B-frames, the representation MM-ViT's motion vectors and residuals are defined on."""
    import av

    try:
        with av.open(path) as container:
            ctx = container.streams.video[0].codec_context
            codec, b_frames = ctx.name, bool(ctx.has_b_frames)
    except (av.FFmpegError, IndexError, OSError):
        return  # unreadable files are counted and reported by the samples themselves
    if b_frames or codec != "mpeg4":
        warn_once(log, "b-frames", "%s is %s%s, not a `videoformer extract` cache (MPEG-4, GOP 12, no B-frames): "
                  "B-frames' future references are ignored and motion vectors differ from MM-ViT's. Run "
                  "`videoformer extract DATASET OUT` and set data.root to OUT/<name of DATASET>", path, codec,
                  " with B-frames" if b_frames else "")


class CompressedVideoDataset(_SkippingDataset):
    """Compressed-domain samples (MM-ViT): a dict with ``iframe`` (T, 3, H, W), ``mv`` (T, 2, H, W),
    ``residual`` (T, 3, H, W) (raw ints, or normalised floats via ``transform(iframe, mv, residual,
    rng)``), ``audio`` (T, 128) float, ``has_audio`` and ``label``.

    Records should point at MPEG-4 re-encodes (``reencode_mpeg4`` / ``videoformer extract``); ``num_segments``
    frames are sampled TSN-style within the record's segment.
    """

    def __init__(self, records: Sequence[VideoRecord], num_segments: int = 8, accumulate: bool = True,
                 train: bool = True, transform: Callable | None = None, audio: bool = True,
                 audio_weights: str | os.PathLike | None = None, **kw) -> None:
        super().__init__(records, **kw)
        self.num_segments, self.accumulate, self.train = num_segments, accumulate, train
        self.transform, self.audio, self.audio_weights = transform, audio, audio_weights
        # Problems of the whole dataset are reported here, once, not by every worker for every sample.
        if records:
            check_compressed_source(records[0].path)
        if audio:
            from videoformer.data.audio import default_embedder

            default_embedder(audio_weights)  # warns once when the VGGish fallback is used

    @staticmethod
    def split(sample: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``({modality: tensor}, label)`` of a sample: the model inputs of a :class:`~videoformer.data.batch.Batch`."""
        return {m: sample[m] for m in COMPRESSED}, sample["label"]

    def _load(self, record: VideoRecord, rng: np.random.Generator):
        lo, hi = _frame_range(record, frame_index(record.path))
        idx = lo + uniform_indices(hi - lo, self.num_segments, self.train, rng)
        embedder = None
        if self.audio:
            from videoformer.data.audio import default_embedder

            embedder = default_embedder(self.audio_weights)
        c = extract_compressed(record.path, indices=idx, accumulate=self.accumulate, audio=self.audio,
                               audio_embedder=embedder)
        iframe, mv, res = (torch.from_numpy(a) for a in (c.iframe, c.mv, c.residual))
        sample = {"iframe": iframe, "mv": mv, "residual": res}
        if self.transform is not None:
            sample = self.transform(iframe, mv, res, rng)
        sample.update(audio=torch.from_numpy(c.audio), has_audio=torch.tensor(c.has_audio),
                      frame_indices=torch.from_numpy(c.frame_indices), label=_label(record))
        return sample
