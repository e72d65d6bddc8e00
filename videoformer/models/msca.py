"""MSCA (multi-head self/cross-attention) and TokenShift on the frame-wise ViT (Hashiguchi & Tamaki, 2022).

Both keep the image ViT's parameters and MACs and only change *what* each frame reads:

- :class:`MSCA` (Eq. 10-11) replaces MSA in the last ``msca_blocks`` blocks by :class:`CrossFrameAttention`:
  after the block's own ``qkv`` projection, Q, K and/or V of the first ``heads_back`` heads come from frame
  t-1 and of the next ``heads_fwd`` heads from frame t+1 (variants Q, K, V, QK, KV, QV, QKV; Eq. 17-18), or,
  for the patch-direction variants pQ ... pQKV, of the first ``tokens_back`` tokens (CLS included, index 0)
  and the next ``tokens_fwd`` tokens (Eq. 19-23).
- :class:`TokenShift` (Eq. 4-9) shifts the first ``channels_back`` channels of the CLS token from frame t-1
  and the next ``channels_fwd`` from frame t+1, before MSA and before the MLP of every block. Default: a
  quarter of the channels each way, the official TokShift-Transformer setting (``SHIFT_DIV: 4``,
  ``fold = c // fold_div`` per direction in ``vit_models/modeling_tokshift.py``).

Where the shifted slices sit (``shift_layout``, :data:`~videoformer.layers.shift.LAYOUTS`): our default
``"back_fwd"`` follows the MSCA paper's Eq. 8 (t-1 slice first, then t+1). The authors' code differs:
TokShift-Transformer's ``shift_tk`` takes the first ``c // fold_div`` CLS channels from t+1 and the next ones
from t-1 (``"fwd_back"``); the MSCA authors' ``AttentionShift`` takes the first ``h // fold_div`` K/V heads from
t+1 and the *last* ones from t-1 (``"fwd_rest_back"``). Their checkpoints load with their layout.

Boundary frames are zero-padded as TSM / TokenShift and the official MSCA code do (``boundary="circular"``
wraps time around instead); see :mod:`videoformer.layers.shift`. The frame count travels with the tokens
in a :class:`~videoformer.layers.shift.FrameGrid`, so clips of any length ``T >= 2`` work.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from ..layers import AxisAttention, Block, FrameGrid, Grouping, attend
from ..layers.shift import Boundary, ShiftLayout, check_boundary, check_layout, shift_frames
from .vit import FramewiseViT, FramewiseViTConfig

HEAD_VARIANTS: tuple[str, ...] = ("Q", "K", "V", "QK", "KV", "QV", "QKV")
PATCH_VARIANTS: tuple[str, ...] = tuple(f"p{v}" for v in HEAD_VARIANTS)
VARIANTS: tuple[str, ...] = HEAD_VARIANTS + PATCH_VARIANTS


def _frame_grid(grid: object, who: str) -> FrameGrid:
    if not isinstance(grid, FrameGrid):
        raise ValueError(f"{who} needs a FrameGrid carrying the number of frames, got {grid!r}")
    return grid


class CrossFrameAttention(nn.Module):
    """MSCA sublayer (Eq. 17-23): MSA whose Q / K / V slices (heads or tokens) come from frames t-1 and t+1.

    Parameters ``qkv`` (fused ``3·D``, q|k|v, heads contiguous) and ``proj`` are those of
    :class:`~videoformer.layers.AxisAttention`, so image-ViT weights load unchanged. Scores are scaled by
    1/√(D/h), the head width (ViT and the official code; Eq. 14 writes √D).

    Args:
        variant: one of :data:`VARIANTS`; ``"KV"`` is Eq. 17, ``"V"`` Eq. 18, ``"pKV"`` Eq. 21-22, ``"pV"`` Eq. 23.
        back, fwd: heads (head variants) or tokens (``p`` variants) taken from frame t-1 / t+1.
        boundary: ``"zero"`` or ``"circular"`` (see :mod:`videoformer.layers.shift`).
        layout: where the t-1 / t+1 slices sit (``"back_fwd"``, ``"fwd_back"``, ``"fwd_rest_back"``).
    """

    def __init__(self, dim: int, num_heads: int, variant: str = "KV", back: int = 1, fwd: int = 1,
                 boundary: Boundary = "zero", qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, layout: ShiftLayout = "back_fwd") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown MSCA variant {variant!r}; choose from {', '.join(VARIANTS)}")
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        check_boundary(boundary)
        check_layout(layout)
        patch = variant.startswith("p")
        if not patch and (back < 0 or fwd < 0 or back + fwd > num_heads):
            raise ValueError(f"MSCA-{variant}: heads back={back} + fwd={fwd} must be >= 0 and at most "
                             f"num_heads={num_heads}")
        if patch and (back < 0 or fwd < 0):
            raise ValueError(f"MSCA-{variant}: tokens back={back}, fwd={fwd} must be >= 0")
        self.variant, self.back, self.fwd, self.boundary, self.layout = variant, back, fwd, boundary, layout
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.shift_dim = 2 if patch else 1  # axis of (B*T, heads, tokens, d): tokens or heads
        self.shifted = tuple(c in variant for c in "QKV")
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop, self.proj_drop = attn_drop, nn.Dropout(proj_drop)

    @classmethod
    def adopt(cls, attn: AxisAttention, variant: str, back: int, fwd: int, boundary: Boundary = "zero",
              layout: ShiftLayout = "back_fwd") -> "CrossFrameAttention":
        """An MSCA sublayer that takes over the ``qkv`` / ``proj`` modules (and dropout) of a frame-wise MSA."""
        if attn.fc is not None or attn.prefix != "replicate" or attn.groupings != (Grouping(("t", "h", "w")),):
            raise ValueError(f"MSCA replaces a frame-wise MSA (one head group over a frame, no extra fc), got {attn}")
        dim = attn.proj.in_features
        new = cls(dim, attn.num_heads, variant, back, fwd, boundary, attn.qkv.bias is not None,
                  attn.attn_drop, attn.proj_drop.p, layout)
        new.qkv, new.proj = attn.qkv, attn.proj
        return new

    def extra_repr(self) -> str:
        unit = "tokens" if self.shift_dim == 2 else "heads"
        return (f"MSCA-{self.variant}, {unit} back={self.back} fwd={self.fwd}, boundary={self.boundary}, "
                f"layout={self.layout}")

    def forward(self, x: torch.Tensor, grid: FrameGrid) -> torch.Tensor:
        """``x``: normalised tokens ``(B*T, P + N, D)`` of every frame; returns the residual update."""
        grid = _frame_grid(grid, "CrossFrameAttention")
        grid.check(x)
        qkv = rearrange(self.qkv(x), "bt n (three k d) -> three bt k n d", three=3, d=self.head_dim)
        q, k, v = (
            shift_frames(m, grid.frames, self.shift_dim, self.back, self.fwd, self.boundary, self.layout) if s else m
            for m, s in zip(qkv.unbind(0), self.shifted)
        )
        out = attend(q, k, v, self.attn_drop if self.training else 0.0)  # (B*T, heads, P + N, d)
        return self.proj_drop(self.proj(rearrange(out, "bt k n d -> bt n (k d)")))


class TokenShiftBlock(Block):
    """TokenShift block (Eq. 4-7): ``Shift`` (Eq. 8-9, CLS channels only) before each attention sublayer and
    before the MLP. It takes over the submodules of an existing :class:`~videoformer.layers.Block` (same
    parameters, same names, no re-initialisation)."""

    def __init__(self, block: Block, back: int, fwd: int, boundary: Boundary = "zero",
                 layout: ShiftLayout = "back_fwd") -> None:
        nn.Module.__init__(self)  # adopt ``block``'s children instead of building new ones
        for name, child in block.named_children():
            self.add_module(name, child)
        dim = block.norm_mlp.normalized_shape[0]
        check_boundary(boundary)
        check_layout(layout)
        if back < 0 or fwd < 0 or back + fwd > dim:
            raise ValueError(f"TokenShift: channels back={back} + fwd={fwd} must be >= 0 and at most dim={dim}")
        self.back, self.fwd, self.boundary, self.layout = back, fwd, boundary, layout

    def extra_repr(self) -> str:
        return f"CLS channels back={self.back} fwd={self.fwd}, boundary={self.boundary}, layout={self.layout}"

    def shift(self, x: torch.Tensor, grid: FrameGrid) -> torch.Tensor:
        """Eq. 8-9: shift channels of the CLS token (index 0) across frames, pass the patch tokens through."""
        cls = shift_frames(x[:, :1], grid.frames, 2, self.back, self.fwd, self.boundary, self.layout)
        return torch.cat([cls, x[:, 1:]], dim=1)

    def forward(self, x: torch.Tensor, grid: FrameGrid) -> torch.Tensor:
        grid = _frame_grid(grid, "TokenShiftBlock")
        for norm, attn in zip(self.norms, self.attns):
            x = self.shift(x, grid)
            x = x + self.drop_path(attn(norm(x), grid))
        x = self.shift(x, grid)
        return x + self.drop_path(self.mlp(self.norm_mlp(x)))


@dataclass
class MSCAConfig(FramewiseViTConfig):
    """Frame-wise ViT-B/16 with MSCA-KV, one head each way, in all 12 blocks (the paper's best, Tables 1-3).

    ``heads_back`` / ``heads_fwd`` (h_b, h_f) apply to the head variants, ``tokens_back`` / ``tokens_fwd``
    (N_b, N_f; Table 4's best 8 / 8) to the ``p`` variants; ``msca_blocks``: MSCA in the last k blocks
    (Table 3), ``None`` for all.
    """

    variant: str = "KV"
    heads_back: int = 1
    heads_fwd: int = 1
    tokens_back: int = 8
    tokens_fwd: int = 8
    msca_blocks: int | None = None
    boundary: str = "zero"
    shift_layout: str = "back_fwd"  # the authors' AttentionShift code: "fwd_rest_back"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown MSCA variant {self.variant!r}; choose from {', '.join(VARIANTS)}")
        check_boundary(self.boundary)
        check_layout(self.shift_layout)
        if min(self.heads_back, self.heads_fwd) < 0 or self.heads_back + self.heads_fwd > self.num_heads:
            raise ValueError(f"heads_back={self.heads_back} + heads_fwd={self.heads_fwd} must be >= 0 and at "
                             f"most num_heads={self.num_heads}")
        tokens = self.patches**2 + int(self.class_token)
        if min(self.tokens_back, self.tokens_fwd) < 0 or self.tokens_back + self.tokens_fwd > tokens:
            raise ValueError(f"tokens_back={self.tokens_back} + tokens_fwd={self.tokens_fwd} must be >= 0 and "
                             f"at most the {tokens} tokens of a frame")
        if self.msca_blocks is None:
            self.msca_blocks = self.depth
        if not 0 <= self.msca_blocks <= self.depth:
            raise ValueError(f"msca_blocks={self.msca_blocks} must be in [0, depth={self.depth}]")

    @property
    def shift_amounts(self) -> tuple[int, int]:
        """(back, fwd): heads for the head variants, tokens for the patch variants."""
        if self.variant.startswith("p"):
            return self.tokens_back, self.tokens_fwd
        return self.heads_back, self.heads_fwd


class MSCA(FramewiseViT):
    """Frame-wise ViT with MSCA (Eq. 10-11) replacing MSA in its last ``msca_blocks`` blocks."""

    def __init__(self, cfg: MSCAConfig) -> None:
        super().__init__(cfg)
        back, fwd = cfg.shift_amounts
        for block in self.blocks[cfg.depth - cfg.msca_blocks:]:
            block.attns[0] = CrossFrameAttention.adopt(block.attns[0], cfg.variant, back, fwd, cfg.boundary,
                                                       cfg.shift_layout)


@dataclass
class TokenShiftConfig(FramewiseViTConfig):
    """Frame-wise ViT-B/16 with TokenShift in every block; ``None`` channels: ``dim // 4`` each way."""

    channels_back: int | None = None
    channels_fwd: int | None = None
    boundary: str = "zero"
    shift_layout: str = "back_fwd"  # official TokShift-Transformer: "fwd_back"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.class_token:
            raise ValueError("TokenShift shifts the class token: class_token must be True")
        check_boundary(self.boundary)
        check_layout(self.shift_layout)
        self.channels_back = self.dim // 4 if self.channels_back is None else self.channels_back
        self.channels_fwd = self.dim // 4 if self.channels_fwd is None else self.channels_fwd
        if min(self.channels_back, self.channels_fwd) < 0 or self.channels_back + self.channels_fwd > self.dim:
            raise ValueError(f"channels_back={self.channels_back} + channels_fwd={self.channels_fwd} must be >= 0 "
                             f"and at most dim={self.dim}")


class TokenShift(FramewiseViT):
    """Frame-wise ViT whose blocks shift CLS-token channels across frames (TokenShift, Eq. 4-9)."""

    def __init__(self, cfg: TokenShiftConfig) -> None:
        super().__init__(cfg)
        self.blocks = nn.ModuleList(
            TokenShiftBlock(b, cfg.channels_back, cfg.channels_fwd, cfg.boundary, cfg.shift_layout) for b in self.blocks
        )
