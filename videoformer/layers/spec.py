"""The sublayer spec: what one attention sublayer of a block attends over, and how it starts.

Every model but MViT is ``embed + plan + pool``, the plan being the :class:`Sublayer` s of each block. A spec
names the head groups' :class:`~videoformer.layers.grid.Grouping` s, what happens to the prefix (CLS) tokens,
the extra ``d×d`` projection (TimeSformer's ``temporal_fc``), an optional attention mask over each sequence
(MM-ViT co-attention: no key of the query's own modality), an optional q/k/v hook (MSCA: heads or tokens of
frames t±1, :class:`~videoformer.layers.shift.FrameShift`), an optional post-op (MM-ViT IV: a depthwise
window convolution, :class:`WindowConv`), and its *init role* -- how image-ViT weights initialise it
(:mod:`videoformer.weights.inflate`) -- which nothing has to guess from shapes or attribute names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from .grid import Grid, Grouping

PrefixMode = Literal["replicate", "exclude"]
InitRole = Literal["pretrained", "zero_output", "added", "value_only"]
"""How an image ViT's MSA initialises the sublayer (ViViT §3.4, TimeSformer §4):
``"pretrained"``: the image MSA as it is (the image ViT's own sublayer, ViViT model 4's shared projection);
``"zero_output"``: the image ``qkv`` and a zero output projection, a residual no-op that still trains (ViViT
model 3's temporal MSA); ``"added"``: the image MSA with its extra ``fc`` zeroed (TimeSformer / MM-ViT added
sublayers); ``"value_only"``: the value rows of the image ``qkv`` (MM-ViT shift-merge)."""
INIT_ROLES: tuple[str, ...] = ("pretrained", "zero_output", "added", "value_only")
Mixer = Literal["attention", "shift_merge"]

QKVHook = Callable[[torch.Tensor, Grid], torch.Tensor]
"""``(qkv (B, L, 3, heads, d), grid) -> qkv``: applied to the projected queries, keys and values of the whole
sublayer before they are grouped into sequences."""


@dataclass(frozen=True)
class OthersOnly:
    """Attention mask: a query never attends to its own position of the sequence (MM-ViT co-attention over
    ``m``: the keys of the other modalities at the same ``(t, h, w)``)."""

    def __call__(self, length: int, device: torch.device | str) -> torch.Tensor:
        """``(L, L)`` boolean, ``True`` where a query may attend (an index comparison, not a boolean ``eye``:
        ONNX has no boolean EyeLike kernel in onnxruntime)."""
        pos = torch.arange(length, device=device)
        return pos[:, None] != pos[None, :]


@dataclass(frozen=True)
class WindowConv:
    """Post-op: a depthwise ``Conv3d`` with this ``(t, h, w)`` kernel, stride 1, "same" padding, applied per
    modality to the grid outputs of the sublayer; it starts as the identity (MM-ViT IV)."""

    kernel: tuple[int, int, int]


@dataclass(frozen=True)
class Sublayer:
    """One attention sublayer of a block (ViViT Eq. 4-7; see the module docstring).

    Args:
        groupings: one :class:`Grouping` per head group (heads split evenly; ViViT model 4 has two).
        prefix: ``"replicate"``: prefix tokens join every sequence, their outputs averaged over the sequences;
            ``"exclude"``: prefix tokens are left untouched.
        extra_proj: a second ``d×d`` projection ``fc`` after the output projection.
        mask: which keys each query of a sequence may see (``None``: all).
        qkv_hook: transforms q/k/v before grouping (frame shifts of heads or tokens).
        post: an operation on the grid outputs (:class:`WindowConv`).
        init: the :data:`InitRole` for image-ViT initialisation.
        mixer: ``"attention"`` (:class:`~videoformer.layers.attention.AxisAttention`) or ``"shift_merge"``
            (:class:`~videoformer.layers.attention.ShiftMerge`: values only, no queries or keys).
    """

    groupings: tuple[Grouping, ...]
    prefix: PrefixMode = "replicate"
    extra_proj: bool = False
    mask: Callable[[int, torch.device | str], torch.Tensor] | None = None
    qkv_hook: QKVHook | None = None
    post: WindowConv | None = None
    init: InitRole = "pretrained"
    mixer: Mixer = "attention"

    def __post_init__(self) -> None:
        object.__setattr__(self, "groupings", tuple(self.groupings))
        if not self.groupings or not all(isinstance(g, Grouping) for g in self.groupings):
            raise ValueError(f"a sublayer needs one or more Groupings, got {self.groupings!r}")
        if self.prefix not in ("replicate", "exclude"):
            raise ValueError(f"prefix must be 'replicate' or 'exclude', got {self.prefix!r}")
        if self.init not in INIT_ROLES:
            raise ValueError(f"unknown init role {self.init!r}; choose from {', '.join(INIT_ROLES)}")
        if self.mixer not in ("attention", "shift_merge"):
            raise ValueError(f"mixer must be 'attention' or 'shift_merge', got {self.mixer!r}")


SHIFT_MERGE = Sublayer((Grouping(("m",)),), "exclude", extra_proj=True, init="value_only", mixer="shift_merge")
"""MM-ViT's shift-merge sublayer (Eq. 17-20): values only, mixed across the modalities at each position."""


def attend_over(*axes: str, prefix: PrefixMode = "replicate", **fields) -> Sublayer:
    """Shorthand for a one-head-group sublayer: ``attend_over("t", "w")`` attends over ``(t, w)``."""
    return Sublayer((Grouping(axes),), prefix, **fields)
