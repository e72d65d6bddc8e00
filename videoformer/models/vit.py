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

from ..layers import FrameGrid, Grid, Grouping, JointPosEmbed, Sublayer, TubeletEmbed
from ..layers.block import PreHook
from ..layers.pos_embed import check_resize_mode
from .base import TransformerConfig, VideoModel, make_blocks

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


FRAME = Sublayer((Grouping(("t", "h", "w")),))  # MSA over one frame (t = 1 in a FrameGrid), CLS included


class FramewiseViT(VideoModel):
    """ViT on ``B*T`` frames: ``z = [cls, E x_1 .. E x_N] + p`` (ViViT Eq. 1), L blocks, CLS -> head, mean over T.

    Subclasses change what each block does through :meth:`sublayer_plan` and :meth:`block_hook` (MSCA,
    TokenShift); the parameters stay the image ViT's.
    """

    def __init__(self, cfg: FramewiseViTConfig) -> None:
        super().__init__()
        self.cfg, self.num_features, d = cfg, cfg.dim, cfg.dim
        self.patch_embed = TubeletEmbed(cfg.in_chans, d, (1, cfg.patch_size, cfg.patch_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.class_token else None
        self.num_prefix = int(cfg.class_token)
        self.pos_embed = JointPosEmbed(d, Grid(t=1, h=cfg.patches, w=cfg.patches, prefix=self.num_prefix),
                                       cfg.pos_std, cfg.pos_resize)
        self.blocks = make_blocks(cfg, self.sublayer_plan(cfg), pre=self.block_hook(cfg))
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.init_parameters(cfg)

    @staticmethod
    def sublayer_plan(cfg: FramewiseViTConfig) -> list[tuple[Sublayer, ...]]:
        """The sublayers of each block: the image ViT's MSA over each frame."""
        return [(FRAME,)] * cfg.depth

    @staticmethod
    def block_hook(cfg: FramewiseViTConfig) -> PreHook | None:
        """A hook on the residual stream before each sublayer and the MLP (none: the image ViT)."""
        return None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> normalised tokens ``(B, T, P + N, D)`` of every frame (``readout="mean_tokens"``:
        ``(B, 1, P + N, D)``, the frame mean taken before the final LayerNorm)."""
        x, grid = fold_frames(*self.patch_embed(x))
        x, grid = self.embed(x, grid, self.cls_token, self.pos_embed)
        x = rearrange(self.run_blocks(self.blocks, x, grid), "(b t) n d -> b t n d", t=grid.frames)
        if self.cfg.readout == "mean_tokens":
            x = x.mean(dim=1, keepdim=True)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over frames of each frame's CLS token or mean patch token (= mean of the frame logits, the
        head being linear)."""
        frames = x[:, :, 0] if self.cls_token is not None else x.mean(dim=2)
        return frames.mean(dim=1)


def fold_frames(x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, FrameGrid]:
    """Tokens ``(B, T*N, D)`` of a ``(t, h, w)`` grid -> ``(B*T, N, D)``: each token frame a sequence of the
    batch, the frame count carried by the :class:`FrameGrid` (frame-wise ViT, ViViT model 2's spatial encoder)."""
    x = rearrange(x, "b (t n) d -> (b t) n d", t=grid.t)
    return x, FrameGrid(t=1, h=grid.h, w=grid.w, m=grid.m, prefix=grid.prefix, frames=grid.t)
