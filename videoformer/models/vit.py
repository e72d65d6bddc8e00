"""Frame-wise ViT: an image ViT applied to every frame, frame logits averaged over time.

The baseline of the MSCA paper, and TimeSformer's "space-only" attention. Read-out (``readout``):
``"mean_logits"`` (default; Hugging Face computes the per-frame logits, TokShift-Transformer averages them:
their mean over time is this model's output) or ``"mean_tokens"`` (the official TimeSformer space-only model:
every token averaged over frames *before* the final LayerNorm, then the CLS token -> head).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from ..layers import AxisAttention, Block, FrameGrid, Grid, Grouping, JointPosEmbed, TubeletEmbed, drop_path_rates
from ..layers.pos_embed import check_resize_mode
from .base import TransformerConfig, VideoModel, init_weights

READOUTS = ("mean_logits", "mean_tokens")


@dataclass
class FramewiseViTConfig(TransformerConfig):
    """ViT-B/16 on each frame by default; ``class_token=False`` pools patch tokens by their mean.

    ``readout``: ``"mean_logits"`` or ``"mean_tokens"`` (official TimeSformer space-only, see the module
    docstring); ``pos_resize``: positional-embedding rule at other sizes (``"interpolate"`` or ``"nearest"``).
    """

    class_token: bool = True
    readout: str = "mean_logits"
    pos_resize: str = "interpolate"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_readout(self.readout)
        check_resize_mode(self.pos_resize)


def check_readout(readout: str) -> None:
    if readout not in READOUTS:
        raise ValueError(f"unknown frame-wise read-out {readout!r}; choose from {', '.join(READOUTS)}")


class FramewiseViT(VideoModel):
    """ViT on ``B*T`` frames: ``z = [cls, E x_1 .. E x_N] + p`` (ViViT Eq. 1), L blocks, CLS -> head, mean over T."""

    def __init__(self, cfg: FramewiseViTConfig) -> None:
        super().__init__()
        self.cfg, self.num_features, d = cfg, cfg.dim, cfg.dim
        self.patch_embed = TubeletEmbed(cfg.in_chans, d, (1, cfg.patch_size, cfg.patch_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.class_token else None
        self.num_prefix = int(cfg.class_token)
        self.pos_embed = JointPosEmbed(d, Grid(t=1, h=cfg.patches, w=cfg.patches, prefix=self.num_prefix),
                                       cfg.pos_std, cfg.pos_resize)
        self.blocks = nn.ModuleList(
            Block(
                d,
                [AxisAttention(d, cfg.num_heads, [Grouping(("t", "h", "w"))], "replicate", cfg.qkv_bias,
                               cfg.attn_drop_rate, cfg.drop_rate)],
                cfg.mlp_ratio, dp, cfg.drop_rate, cfg.act, cfg.norm_eps,
            )
            for dp in drop_path_rates(cfg.drop_path_rate, cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        init_weights(self, cfg.weight_std)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self._init_head(cfg.num_classes, cfg.head_drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> normalised tokens ``(B, T, P + N, D)`` of every frame (``readout="mean_tokens"``:
        ``(B, 1, P + N, D)``, the frame mean taken before the final LayerNorm)."""
        x, grid = self.patch_embed(x)
        B, T = x.shape[0], grid.t
        x = rearrange(x, "b (t n) d -> (b t) n d", t=T)
        grid = FrameGrid(t=1, h=grid.h, w=grid.w, prefix=self.num_prefix, frames=T)  # frames fold into batch
        x = self.run_blocks(self.blocks, self.pos_embed(self.prepend(self.cls_token, x), grid), grid)
        x = rearrange(x, "(b t) n d -> b t n d", b=B)
        if self.cfg.readout == "mean_tokens":
            x = x.mean(dim=1, keepdim=True)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over frames of each frame's CLS token or mean patch token (= mean of the frame logits, the
        head being linear)."""
        frames = x[:, :, 0] if self.cls_token is not None else x.mean(dim=2)
        return frames.mean(dim=1)
