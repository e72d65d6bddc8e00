"""Frame samplers: TSN uniform segments, dense T x tau clips, multi-view testing.

All samplers return int64 presentation indices in ``[0, num_frames)``. Policy when the video is
shorter than the clip: ``overflow="pad"`` repeats the last frame, ``overflow="loop"`` wraps
around to the start (both keep the clip length fixed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["uniform_indices", "dense_indices", "multiview_indices", "spatial_crop_offsets", "View"]

Overflow = Literal["pad", "loop"]


def _check(num_frames: int, count: int, name: str) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if count < 1:
        raise ValueError(f"{name} must be >= 1, got {count}")


def uniform_indices(
    num_frames: int,
    num_segments: int,
    train: bool,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """TSN sampling: split the video into ``num_segments`` equal segments, take one frame of each.

    Segment k holds frames ``[floor(k n / T), floor((k + 1) n / T))``.

    Training takes a uniformly random frame in each segment, testing the segment centre. With fewer
    frames than segments, segments overlap and frames repeat (never out of range).
    """
    _check(num_frames, num_segments, "num_segments")
    bounds = np.floor(np.linspace(0, num_frames, num_segments + 1)).astype(np.int64)
    starts, lengths = bounds[:-1], np.maximum(bounds[1:] - bounds[:-1], 1)
    if train:
        rng = rng or np.random.default_rng()
        offsets = rng.integers(0, lengths)
    else:
        offsets = lengths // 2
    return np.clip(starts + offsets, 0, num_frames - 1)


def _wrap(idx: np.ndarray, num_frames: int, overflow: Overflow) -> np.ndarray:
    if overflow == "pad":
        return np.minimum(idx, num_frames - 1)
    if overflow == "loop":
        return idx % num_frames
    raise ValueError(f"overflow must be 'pad' or 'loop', got {overflow!r}")


def dense_indices(
    num_frames: int,
    clip_len: int,
    stride: int,
    train: bool,
    rng: np.random.Generator | None = None,
    clip_idx: int = 0,
    num_clips: int = 1,
    overflow: Overflow = "pad",
) -> np.ndarray:
    """Dense sampling of ``clip_len`` frames ``stride`` apart (ViViT / TimeSformer / MViT "T x tau").

    Training picks a uniformly random start; testing places clip ``clip_idx`` of ``num_clips``
    evenly between the first and last possible start (one clip: the centred one).
    """
    _check(num_frames, clip_len, "clip_len")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if not 0 <= clip_idx < num_clips:
        raise ValueError(f"clip_idx {clip_idx} not in [0, {num_clips})")
    span = (clip_len - 1) * stride + 1
    room = max(num_frames - span, 0)
    if train:
        rng = rng or np.random.default_rng()
        start = int(rng.integers(0, room + 1))
    elif num_clips == 1:
        start = room // 2
    else:
        start = int(round(room * clip_idx / (num_clips - 1)))
    return _wrap(start + np.arange(clip_len, dtype=np.int64) * stride, num_frames, overflow)


@dataclass(frozen=True)
class View:
    """One test view: the frame indices of a temporal clip and a spatial crop (top, left, size)."""

    clip_idx: int
    crop_idx: int
    indices: np.ndarray
    top: int
    left: int
    size: int


def spatial_crop_offsets(height: int, width: int, size: int, num_crops: int = 3) -> list[tuple[int, int]]:
    """(top, left) of ``num_crops`` square crops spread along the longer side (left / centre / right
    for landscape, top / centre / bottom for portrait); the shorter side is centred. One crop: centre.
    """
    if size > min(height, width):
        raise ValueError(f"crop size {size} larger than the frame {height}x{width}; scale first")
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    long_room = (width if width >= height else height) - size
    short_off = ((height if width >= height else width) - size) // 2
    if num_crops == 1:
        along = [long_room // 2]
    else:
        along = [int(round(long_room * k / (num_crops - 1))) for k in range(num_crops)]
    return [(short_off, a) if width >= height else (a, short_off) for a in along]


def multiview_indices(
    num_frames: int,
    clip_len: int,
    stride: int,
    num_clips: int,
    height: int,
    width: int,
    crop_size: int,
    num_crops: int = 3,
    overflow: Overflow = "pad",
) -> list[View]:
    """Multi-view testing: ``num_clips`` temporal clips x ``num_crops`` spatial crops (ViViT §4.1).

    ``height`` / ``width`` are those of the frames the crops are taken from (after short-side scaling).
    """
    offsets = spatial_crop_offsets(height, width, crop_size, num_crops)
    views = []
    for k in range(num_clips):
        idx = dense_indices(num_frames, clip_len, stride, train=False, clip_idx=k,
                            num_clips=num_clips, overflow=overflow)
        for c, (top, left) in enumerate(offsets):
            views.append(View(k, c, idx, top, left, crop_size))
    return views
