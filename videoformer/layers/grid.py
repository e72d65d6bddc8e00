"""Token grid with named axes ``(m, t, h, w)`` plus prefix (CLS) tokens.

Tokens of a video are stored as ``(B, P + M*T*H*W, D)``: ``P`` prefix tokens first, then the grid in
``(m t h w)`` order. The grid size travels with the tokens (``forward(x, grid)``); models never re-derive
it from a config. ``group`` / ``ungroup`` turn "attend over these axes" into einops patterns, so every
factorisation in the papers (space, time, axial, windows, dilated grids, modalities) is one call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Mapping

import torch
from einops import rearrange

AXES = ("m", "t", "h", "w")


@dataclass(frozen=True)
class Grid:
    """Sizes of the token grid: modalities ``m``, time ``t``, height ``h``, width ``w``; ``prefix`` CLS tokens."""

    t: int
    h: int
    w: int
    m: int = 1
    prefix: int = 0

    @property
    def numel(self) -> int:
        """Number of grid (non-prefix) tokens."""
        return self.m * self.t * self.h * self.w

    @property
    def sizes(self) -> dict[str, int]:
        return {"m": self.m, "t": self.t, "h": self.h, "w": self.w}

    def replace(self, **changes: int) -> "Grid":
        return replace(self, **changes)

    def check(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(B, prefix + numel, D)``."""
        if x.ndim != 3 or x.shape[1] != self.prefix + self.numel:
            raise ValueError(
                f"tokens of shape {tuple(x.shape)} do not match {self} "
                f"(expected (B, {self.prefix} + {self.numel}, D))"
            )


@dataclass(frozen=True)
class FrameGrid(Grid):
    """The grid of one frame (``t = 1``) of a clip whose ``frames`` frames are folded into the batch: tokens
    ``(B * frames, prefix + h*w, D)`` with the frames of a clip consecutive, ``(b t)`` (frame-wise ViT)."""

    frames: int = 1


@dataclass(frozen=True)
class Grouping:
    """How one attention call partitions the grid: the attended axes form the sequence, the rest is batch.

    ``window[a] = s``: axis ``a`` is cut into non-overlapping windows of ``s`` tokens, attention stays inside a
    window. ``dilation[a] = s``: tokens whose index along ``a`` is equal modulo ``s`` form one sequence (a
    strided, "sparse global" grid, TimeSformer L+G). Both are stored as sorted ``(axis, size)`` pairs, so a
    grouping is hashable and its einops patterns are computed once per grid.
    """

    axes: tuple[str, ...]
    window: Mapping[str, int] | None = None
    dilation: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", tuple(self.axes))
        for name in ("window", "dilation"):  # frozen, hashable: sorted (axis, size) pairs
            spec = getattr(self, name)
            if spec is not None:
                object.__setattr__(self, name, tuple(sorted(dict(spec).items())))
        unknown = set(self.axes) - set(AXES)
        if unknown or not self.axes:
            raise ValueError(f"attention axes must be a non-empty subset of {AXES}, got {self.axes}")
        for name, spec in (("window", self.window), ("dilation", self.dilation)):
            for a in dict(spec or {}):
                if a not in self.axes:
                    raise ValueError(f"{name} on axis {a!r} which is not attended ({self.axes})")

    def layout(self, grid: Grid) -> tuple[list[str], list[str], list[str], dict[str, int]]:
        """Axis names of the flat grid (``src``), of the batch and of the sequence, with their sizes."""
        window, dilation = dict(self.window or {}), dict(self.dilation or {})
        src, batch, seq, sizes = [], [], [], {}
        for a in AXES:
            n = grid.sizes[a]
            if a in window or a in dilation:
                s = window.get(a) or dilation[a]
                if n % s:
                    raise ValueError(f"axis {a}={n} is not divisible by its window/dilation {s}")
                outer, inner = f"{a}0", f"{a}1"
                sizes[inner], sizes[outer] = (s, n // s) if a in window else (n // s, s)
                if a in window:  # index = outer * s + inner; attend over inner
                    src += [outer, inner]
                    batch.append(outer)
                    seq.append(inner)
                else:  # index = inner * s + outer; attend over inner (same residue mod s)
                    src += [inner, outer]
                    batch.append(outer)
                    seq.append(inner)
            else:
                src.append(a)
                sizes[a] = n
                (seq if a in self.axes else batch).append(a)
        return src, batch, seq, sizes

    def patterns(self, grid: Grid) -> tuple[str, str, dict[str, int]]:
        """einops patterns ``src -> dst`` and axis sizes for the grid tokens of ``grid`` (cached per grid; under
        ``torch.compile`` computed while tracing, once per compiled graph)."""
        return _build_patterns(self, grid) if torch.compiler.is_compiling() else _patterns(self, grid)

    def seq_len(self, grid: Grid) -> int:
        """Length of each attended sequence (without prefix tokens)."""
        _, _, seq, sizes = self.layout(grid)
        return math.prod(sizes[a] for a in seq)

    def num_groups(self, grid: Grid) -> int:
        """How many independent sequences one clip is split into."""
        return grid.numel // self.seq_len(grid)

    def is_whole(self, grid: Grid) -> bool:
        """One sequence of all grid tokens in their stored order (joint attention): grouping is the identity."""
        return not self.window and not self.dilation and all(
            a in self.axes or n == 1 for a, n in grid.sizes.items())

    def group(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``(B, numel, C)`` grid tokens -> ``(B * groups, L, C)`` sequences."""
        src, dst, sizes = self.patterns(grid)
        return rearrange(x, f"{src} -> {dst}", **sizes)

    def ungroup(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Inverse of :meth:`group`."""
        src, dst, sizes = self.patterns(grid)
        return rearrange(x, f"{dst} -> {src}", **sizes)


def _build_patterns(grouping: Grouping, grid: Grid) -> tuple[str, str, dict[str, int]]:
    src, batch, seq, sizes = grouping.layout(grid)
    return f"b ({' '.join(src)}) c", f"(b {' '.join(batch)}) ({' '.join(seq)}) c", sizes


_patterns = lru_cache(maxsize=256)(_build_patterns)
