"""Frame-shift operators: a slice of heads / tokens / channels of frame t is taken from frame t-1 or t+1.

The frame-wise models (TSM, TokenShift, MSCA) fold the ``T`` frames of a clip into the batch, ``(B*T, ...)``,
so the number of frames travels explicitly with the tokens in a :class:`FrameGrid`. Along one axis of a
``(B*T, ...)`` tensor, :func:`shift_frames` replaces the first ``back`` entries of frame ``t`` by those of frame
``t-1`` and the next ``fwd`` entries by those of frame ``t+1`` (MSCA Eq. 8, 17-18, 21); the rest is left as is.

Where the two slices sit along the axis (``layout``):
    ``"back_fwd"`` (default, MSCA paper Eq. 8): ``[t-1 | t+1 | rest]``.
    ``"fwd_back"`` (official TokShift-Transformer ``shift_tk``): ``[t+1 | t-1 | rest]``.
    ``"fwd_rest_back"`` (the MSCA authors' ``AttentionShift`` code): ``[t+1 | rest | t-1]``, the t-1 slice last.

Boundary frames (``boundary``):
    ``"zero"`` (default, as TSM and the official TokenShift / MSCA code): frame 0 receives zeros in place of
    frame -1, frame T-1 receives zeros in place of frame T. A shifted key of zeros gives uniform attention
    weights, a shifted value of zeros a zero head output.
    ``"circular"``: frame 0 takes frame T-1 and frame T-1 takes frame 0 (time is a ring).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange

from .grid import FrameGrid, Grouping

Boundary = Literal["zero", "circular"]
BOUNDARIES: tuple[str, ...] = ("zero", "circular")
ShiftLayout = Literal["back_fwd", "fwd_back", "fwd_rest_back"]
LAYOUTS: dict[str, tuple[str, str, str]] = {
    "back_fwd": ("back", "fwd", "rest"), "fwd_back": ("fwd", "back", "rest"), "fwd_rest_back": ("fwd", "rest", "back"),
}


def check_layout(layout: str) -> None:
    """Raise ``ValueError`` unless ``layout`` is one of :data:`LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown shift layout {layout!r}; choose from {', '.join(LAYOUTS)}")


def check_boundary(boundary: str) -> None:
    """Raise ``ValueError`` unless ``boundary`` is one of :data:`BOUNDARIES`."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"unknown shift boundary {boundary!r}; choose from {', '.join(BOUNDARIES)}")


def _previous(x: torch.Tensor, boundary: Boundary) -> torch.Tensor:
    """``(B, T, ...)`` -> frame ``t`` holds frame ``t-1``."""
    if boundary == "circular":
        return x.roll(1, dims=1)
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


def _next(x: torch.Tensor, boundary: Boundary) -> torch.Tensor:
    """``(B, T, ...)`` -> frame ``t`` holds frame ``t+1``."""
    if boundary == "circular":
        return x.roll(-1, dims=1)
    return torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)


def shift_frames(x: torch.Tensor, frames: int, dim: int, back: int, fwd: int,
                 boundary: Boundary = "zero", layout: ShiftLayout = "back_fwd") -> torch.Tensor:
    """Temporal shift of a slice along axis ``dim`` of ``x`` (``(B*frames, ...)``, frames consecutive).

    With the default ``layout="back_fwd"``, entries ``[0, back)`` of frame ``t`` come from frame ``t-1``,
    entries ``[back, back+fwd)`` from frame ``t+1``, the rest from frame ``t`` (MSCA Eq. 8 for CLS channels,
    Eq. 17-18 for heads, Eq. 21 for tokens); other layouts place the slices as :data:`LAYOUTS` says.
    ``dim`` counts the axes of ``x`` (``dim >= 1``; axis 0 is the folded batch).
    """
    dim = dim % x.ndim
    if dim == 0:
        raise ValueError("cannot shift along the folded (batch * frames) axis 0")
    size = x.shape[dim]
    if back < 0 or fwd < 0 or back + fwd > size:
        raise ValueError(f"shift amounts back={back} + fwd={fwd} must be >= 0 and fit in the {size} entries of "
                         f"axis {dim} (shape {tuple(x.shape)})")
    check_boundary(boundary)
    check_layout(layout)
    if frames < 1 or x.shape[0] % frames:
        raise ValueError(f"leading axis {x.shape[0]} of {tuple(x.shape)} is not a multiple of frames={frames}")
    if not back and not fwd:
        return x
    if frames < 2:
        raise ValueError(f"a temporal shift needs at least 2 frames, got T={frames} (back={back}, fwd={fwd})")
    clips = rearrange(x, "(b t) ... -> b t ...", t=frames)
    order = LAYOUTS[layout]
    sizes = {"back": back, "fwd": fwd, "rest": size - back - fwd}
    ops = {"back": lambda s: _previous(s, boundary), "fwd": lambda s: _next(s, boundary), "rest": lambda s: s}
    parts = clips.split([sizes[name] for name in order], dim=dim + 1)
    out = torch.cat([ops[name](part) for name, part in zip(order, parts)], dim=dim + 1)
    return rearrange(out, "b t ... -> (b t) ...")


def frame_grid(grid: object, who: str) -> FrameGrid:
    """``grid`` if it carries the frame count, else ``ValueError`` naming ``who``."""
    if not isinstance(grid, FrameGrid):
        raise ValueError(f"{who} needs a FrameGrid carrying the number of frames, got {grid!r}")
    return grid


@dataclass(frozen=True)
class Shift:
    """``back`` entries along an axis from frame t-1, the next ``fwd`` from frame t+1 (slices placed as
    ``layout`` says, boundary frames as ``boundary``), the frame count read from the :class:`FrameGrid`."""

    back: int
    fwd: int
    boundary: Boundary = "zero"
    layout: ShiftLayout = "back_fwd"

    def __post_init__(self) -> None:
        check_boundary(self.boundary)
        check_layout(self.layout)
        if self.back < 0 or self.fwd < 0:
            raise ValueError(f"{self}: back and fwd must be >= 0")

    def apply(self, x: torch.Tensor, grid: object, dim: int) -> torch.Tensor:
        frames = frame_grid(grid, type(self).__name__).frames
        return shift_frames(x, frames, dim, self.back, self.fwd, self.boundary, self.layout)

    def shifted_parts(self, x: torch.Tensor, frames: int, dim: int) -> list[tuple[int, torch.Tensor]]:
        """``(start, entries)`` along ``dim`` of ``x`` shifted: the only entries that differ from ``x`` in
        :meth:`apply`'s result, so a copy of ``x`` with these written in is that result without copying the
        unshifted rest again."""
        size = x.shape[dim]
        if self.back + self.fwd > size:
            raise ValueError(f"shift amounts back={self.back} + fwd={self.fwd} must fit in the {size} entries of "
                             f"axis {dim} (shape {tuple(x.shape)})")
        if self.layout == "fwd_rest_back":  # [t+1 | rest | t-1]: two one-way slices
            regions = [(0, self.fwd, 0, self.fwd, "back_fwd"), (size - self.back, self.back, self.back, 0, "back_fwd")]
        else:
            regions = [(0, self.back + self.fwd, self.back, self.fwd, self.layout)]
        return [(start, shift_frames(x.narrow(dim, start, length), frames, dim, back, fwd, self.boundary, layout))
                for start, length, back, fwd, layout in regions if length]


@dataclass(frozen=True)
class FrameShift(Shift):
    """q/k/v hook of MSCA (Eq. 17-23): of the projections named in ``qkv`` (a subset of ``"QKV"``), the first
    ``back`` heads (``unit="heads"``) or tokens (``unit="tokens"``, CLS included at index 0) come from frame
    t-1 and the next ``fwd`` from frame t+1."""

    qkv: str = "KV"
    unit: Literal["heads", "tokens"] = "heads"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.qkv or set(self.qkv) - set("QKV") or self.unit not in ("heads", "tokens"):
            raise ValueError(f"FrameShift shifts a subset of 'QKV' by heads or tokens, got {self.qkv!r}, {self.unit!r}")

    def check(self, spec: object, num_heads: int) -> None:
        """MSCA replaces a frame-wise MSA: one head group over the frame, CLS replicated, no extra projection."""
        if spec.groupings != (Grouping(("t", "h", "w")),) or spec.prefix != "replicate" or spec.extra_proj:
            raise ValueError(f"MSCA replaces a frame-wise MSA (one head group over a frame, no extra fc), got {spec}")
        if self.unit == "heads" and self.back + self.fwd > num_heads:
            raise ValueError(f"MSCA-{self.qkv}: heads back={self.back} + fwd={self.fwd} must be >= 0 and at most "
                             f"num_heads={num_heads}")

    def __call__(self, qkv: torch.Tensor, grid: object) -> torch.Tensor:
        """``qkv``: ``(B*T, P + N, 3, heads, d)`` of every frame."""
        frames = frame_grid(grid, "MSCA attention").frames
        dim = 1 if self.unit == "tokens" else 2  # axis of (B*T, P + N, heads, d)
        out = qkv.clone()
        for i, name in enumerate("QKV"):
            if name in self.qkv:
                for start, part in self.shifted_parts(qkv.select(2, i), frames, dim):
                    # one indexed write into ``out`` (ONNX export traces it; a copy_ into a view of a view it
                    # does not): [:, start:, i] for tokens, [:, :, i, start:] for heads
                    where = (slice(None), slice(start, start + part.shape[1]), i) if dim == 1 else \
                        (slice(None), slice(None), i, slice(start, start + part.shape[2]))
                    out[where] = part
        return out


@dataclass(frozen=True)
class ClsShift(Shift):
    """Block pre-hook of TokenShift (Eq. 8-9): the first ``back`` channels of the CLS token (index 0) come from
    frame t-1, the next ``fwd`` from frame t+1; patch tokens pass."""

    def __call__(self, x: torch.Tensor, grid: object) -> torch.Tensor:
        return torch.cat([self.apply(x[:, :1], grid, 2), x[:, 1:]], dim=1)
