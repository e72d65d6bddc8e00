"""TimeSformer (Bertasius et al., 2021): the five space-time attention schemes over frame patches.

``space``: attention within each frame (the frame-wise ViT, :class:`~videoformer.models.vit.FramewiseViT`).
``joint``: one MSA over all ``T·N`` patches and the CLS token.
``divided`` (T+S): temporal MSA over the ``T`` patches at one location (CLS excluded, followed by the extra
    ``temporal_fc`` projection), then spatial MSA within each frame with the CLS token replicated per frame
    and its outputs averaged -- exactly the official / Hugging Face block.
``local_global`` (L+G): local MSA within windows of ``T × H/2 × W/2`` patches (with the extra projection),
    then sparse global MSA over the patches at a stride of 2 along t, h and w.
``axial`` (T+W+H): time, then width, then height attention, the first two with the extra projection.
Every scheme uses a separable space + time positional embedding, as the official code does.

Conventions of the official code are config choices: ``pos_resize="nearest"`` resizes the positional and time
embeddings at other input sizes by nearest neighbour (official ``vit.py``; default: bicubic / linear), and
``readout="mean_tokens"`` is the official space-only read-out (see :mod:`videoformer.models.vit`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers import Grid, Grouping, SeparablePosEmbed, Sublayer, TubeletEmbed, attend_over
from .base import TransformerConfig, VideoModel, make_blocks
from ..layers.pos_embed import check_resize_mode
from .vit import FramewiseViT, FramewiseViTConfig, check_readout

SCHEMES = ("space", "joint", "divided", "local_global", "axial")


@dataclass
class TimeSformerConfig(TransformerConfig):
    """TimeSformer-B/16 on 8 frames of 224² by default (Table 1 of the paper)."""

    scheme: str = "divided"
    readout: str = "mean_logits"  # space-only: "mean_tokens" is the official read-out
    pos_resize: str = "interpolate"  # official code: "nearest"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown TimeSformer scheme {self.scheme!r}; choose from {SCHEMES}")
        check_readout(self.readout)
        check_resize_mode(self.pos_resize)
        if self.scheme != "space" and self.readout != "mean_logits":
            raise ValueError(f"readout={self.readout!r} applies to the space-only scheme; {self.scheme} reads the CLS "
                             "token")


def scheme_sublayers(scheme: str, n: int) -> tuple[Sublayer, ...]:
    """The attention sublayers of one block of ``scheme`` on ``n × n`` patches per frame. Added sublayers (all
    but the last) leave the CLS token alone and carry the extra ``fc`` (init role ``"added"``)."""
    added = dict(prefix="exclude", extra_proj=True, init="added")
    if scheme == "joint":
        return (attend_over("t", "h", "w"),)
    if scheme == "divided":
        return attend_over("t", **added), attend_over("h", "w")
    if scheme == "local_global":
        if n % 2:
            raise ValueError(f"local-global attention needs an even number of patches per side, got {n}")
        local = Grouping(("t", "h", "w"), window={"h": n // 2, "w": n // 2})
        sparse = Grouping(("t", "h", "w"), dilation={"t": 2, "h": 2, "w": 2})
        return Sublayer((local,), **added), Sublayer((sparse,))
    if scheme == "axial":
        return attend_over("t", **added), attend_over("w", **added), attend_over("h")
    raise ValueError(f"scheme {scheme!r} has no block plan")


class TimeSformer(VideoModel):
    """TimeSformer with the ``joint``, ``divided``, ``local_global`` or ``axial`` scheme."""

    def __init__(self, cfg: TimeSformerConfig) -> None:
        super().__init__()
        if cfg.scheme == "space":
            raise ValueError("the space-only scheme is FramewiseViT; build it with build_timesformer()")
        self.cfg, self.num_features, d = cfg, cfg.dim, cfg.dim
        self.patch_embed = TubeletEmbed(cfg.in_chans, d, (1, cfg.patch_size, cfg.patch_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = SeparablePosEmbed(d, Grid(t=cfg.num_frames, h=cfg.patches, w=cfg.patches, prefix=1),
                                           cfg.pos_std, time_std=cfg.time_std, mode=cfg.pos_resize)
        self.blocks = make_blocks(cfg, self.sublayer_plan(cfg))
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.init_parameters(cfg)

    @staticmethod
    def sublayer_plan(cfg: TimeSformerConfig) -> list[tuple[Sublayer, ...]]:
        """The sublayers of each block: the scheme's (see :func:`scheme_sublayers`)."""
        return [scheme_sublayers(cfg.scheme, cfg.patches)] * cfg.depth

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> normalised tokens ``(B, 1 + T*N, D)``."""
        x, grid = self.embed(*self.patch_embed(x), self.cls_token, self.pos_embed)
        return self.norm(self.run_blocks(self.blocks, x, grid))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def build_timesformer(cfg: TimeSformerConfig) -> VideoModel:
    """TimeSformer of any scheme; ``space`` is the frame-wise ViT (no time embedding)."""
    if cfg.scheme == "space":
        fields = {k: v for k, v in vars(cfg).items() if k != "scheme"}
        return FramewiseViT(FramewiseViTConfig(**fields))
    return TimeSformer(cfg)
