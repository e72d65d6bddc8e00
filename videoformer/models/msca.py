"""MSCA (multi-head self/cross-attention) and TokenShift on the frame-wise ViT (Hashiguchi & Tamaki, 2022).

Both keep the image ViT's parameters and MACs and only change *what* each frame reads:

- :class:`MSCA` (Eq. 10-11) replaces MSA in the last ``msca_blocks`` blocks by :func:`msca_sublayer`:
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

from ..layers import ClsShift, FrameShift, Sublayer
from ..layers.shift import Boundary, ShiftLayout, check_boundary, check_layout
from .vit import FRAME, FramewiseViT, FramewiseViTConfig

HEAD_VARIANTS: tuple[str, ...] = ("Q", "K", "V", "QK", "KV", "QV", "QKV")
PATCH_VARIANTS: tuple[str, ...] = tuple(f"p{v}" for v in HEAD_VARIANTS)
VARIANTS: tuple[str, ...] = HEAD_VARIANTS + PATCH_VARIANTS


def msca_sublayer(variant: str, back: int, fwd: int, boundary: Boundary = "zero",
                  layout: ShiftLayout = "back_fwd") -> Sublayer:
    """The MSCA sublayer (Eq. 17-23): the frame-wise MSA whose Q / K / V slices named by ``variant`` -- ``back``
    / ``fwd`` heads, or tokens for the ``p`` variants -- come from frames t-1 / t+1 (a
    :class:`~videoformer.layers.shift.FrameShift` q/k/v hook). Its parameters are the image ViT's MSA (``qkv``,
    ``proj``), so image weights load unchanged; scores are scaled by 1/√(D/h), the head width (ViT and the
    official code; Eq. 14 writes √D)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown MSCA variant {variant!r}; choose from {', '.join(VARIANTS)}")
    patch = variant.startswith("p")
    shift = FrameShift(back, fwd, boundary, layout, qkv=variant[1:] if patch else variant,
                       unit="tokens" if patch else "heads")
    return Sublayer(FRAME.groupings, qkv_hook=shift)


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

    @staticmethod
    def sublayer_plan(cfg: MSCAConfig) -> list[tuple[Sublayer, ...]]:
        msca = msca_sublayer(cfg.variant, *cfg.shift_amounts, cfg.boundary, cfg.shift_layout)
        return [(FRAME,)] * (cfg.depth - cfg.msca_blocks) + [(msca,)] * cfg.msca_blocks


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
    """Frame-wise ViT whose blocks shift CLS-token channels across frames before each sublayer and the MLP
    (TokenShift Eq. 4-9, a :class:`~videoformer.layers.shift.ClsShift` block hook)."""

    @staticmethod
    def block_hook(cfg: TokenShiftConfig) -> ClsShift:
        return ClsShift(cfg.channels_back, cfg.channels_fwd, cfg.boundary, cfg.shift_layout)
