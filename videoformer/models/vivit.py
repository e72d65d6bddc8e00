"""ViViT (Arnab et al., 2021), models 1-4 of §3.3 with uniform-frame or tubelet tokenisation (§3.2).

Model 1, spatio-temporal attention: joint MSA over all ``nt·nh·nw`` tokens plus CLS.
Model 2, factorised encoder: a spatial ViT per temporal index (CLS or global average -> ``h_i``), then a
    temporal encoder of ``Lt`` layers over ``H = [h_1 .. h_nt]``; ``Lt = 0`` averages ``h_i`` (Table 2 baseline).
Model 3, factorised self-attention: spatial then temporal MSA in every block (Eq. 4-6), no CLS token.
Model 4, factorised dot-product attention: half the heads over space, half over time, one projection (Eq. 7).

Where the paper leaves a choice, the config names it: ``order`` (model 3: which MSA comes first; model 4: which
half of the heads attends over space), ``classifier`` (CLS token or global average pooling; Scenic allows
either for models 1 and 2, models 3 and 4 have no CLS) and ``act`` (Scenic's flax GELU is the tanh
approximation, ``"gelu_tanh"``). The defaults are the paper's reading; Scenic checkpoints bring Scenic's
(``weights.scenic``): order ``"ts"`` for models 3 and 4, ``"gelu_tanh"``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from ..layers import AxisAttention, Block, Grid, Grouping, JointPosEmbed, TubeletEmbed, drop_path_rates
from .base import TransformerConfig, VideoModel, init_weights

SPACE, TIME, ALL = Grouping(("h", "w")), Grouping(("t",)), Grouping(("t", "h", "w"))


@dataclass
class ViViTConfig(TransformerConfig):
    """ViViT-B/16x2 on 32 frames by default (the Table 2 setting)."""

    model: int = 1
    num_frames: int = 32
    tubelet_t: int = 2  # 1 = uniform frame sampling
    temporal_depth: int = 4  # model 2: Lt
    spatial_pool: str = "token"  # model 2: "token" (CLS) or "avg" per frame
    # model 3: "st" space then time (Eq. 4-5) or "ts"; model 4: "st" the first half of the heads attends over
    # space, "ts" over time (Scenic's factorized_dot_product_attention splits time heads first)
    order: str = "st"
    # "token" (CLS) or "gap" (mean of the final tokens; model 2: of the temporal encoder's); None: token for
    # models 1 and 2, gap for models 3 and 4 (which have no CLS token)
    classifier: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model not in (1, 2, 3, 4):
            raise ValueError(f"ViViT model must be 1, 2, 3 or 4, got {self.model}")
        if self.num_frames % self.tubelet_t:
            raise ValueError(f"num_frames={self.num_frames} is not divisible by tubelet_t={self.tubelet_t}")
        if self.spatial_pool not in ("token", "avg") or self.order not in ("st", "ts"):
            raise ValueError(f"spatial_pool must be token|avg and order st|ts, got {self.spatial_pool}, {self.order}")
        if self.model == 4 and self.num_heads % 2:
            raise ValueError(f"model 4 splits heads in two halves; num_heads={self.num_heads} is odd")
        if self.classifier is None:
            self.classifier = "token" if self.model in (1, 2) else "gap"
        if self.classifier not in ("token", "gap") or (self.model in (3, 4) and self.classifier == "token"):
            raise ValueError(f"classifier must be token|gap (models 3 and 4: gap, they have no CLS token), "
                             f"got {self.classifier!r} for model {self.model}")


class ViViT(VideoModel):
    """ViViT models 1-4 (§3.3); which one is ``cfg.model``."""

    def __init__(self, cfg: ViViTConfig) -> None:
        super().__init__()
        self.cfg, self.num_features, d = cfg, cfg.dim, cfg.dim
        self.patch_embed = TubeletEmbed(cfg.in_chans, d, (cfg.tubelet_t, cfg.patch_size, cfg.patch_size))
        nt, n = cfg.num_frames // cfg.tubelet_t, cfg.patches
        rates = drop_path_rates(cfg.drop_path_rate, cfg.depth + (cfg.temporal_depth if cfg.model == 2 else 0))

        def block(groupings_per_sublayer, rate, prefix="replicate"):
            attns = [AxisAttention(d, cfg.num_heads, g, prefix, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
                     for g in groupings_per_sublayer]
            return Block(d, attns, cfg.mlp_ratio, rate, cfg.drop_rate, cfg.act, cfg.norm_eps)

        if cfg.model == 2:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.spatial_pool == "token" else None
            prefix = int(self.cls_token is not None)
            self.pos_embed = JointPosEmbed(d, Grid(t=1, h=n, w=n, prefix=prefix), cfg.pos_std)
            self.blocks = nn.ModuleList(block([[ALL]], r) for r in rates[: cfg.depth])
            self.norm_spatial = nn.LayerNorm(d, eps=cfg.norm_eps)
            if cfg.temporal_depth:
                token = cfg.classifier == "token"
                self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, d)) if token else None
                self.temporal_pos_embed = JointPosEmbed(d, Grid(t=nt, h=1, w=1, prefix=int(token)), cfg.pos_std)
                self.temporal_blocks = nn.ModuleList(block([[TIME]], r) for r in rates[cfg.depth:])
        else:
            token = cfg.classifier == "token"
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if token else None
            self.pos_embed = JointPosEmbed(d, Grid(t=nt, h=n, w=n, prefix=int(token)), cfg.pos_std)
            space_time = [SPACE, TIME] if cfg.order == "st" else [TIME, SPACE]
            sublayers = {1: [[ALL]], 3: [[g] for g in space_time], 4: [space_time]}[cfg.model]
            self.blocks = nn.ModuleList(block(sublayers, r) for r in rates)
        plain_average = cfg.model == 2 and not cfg.temporal_depth
        self.norm = nn.Identity() if plain_average else nn.LayerNorm(d, eps=cfg.norm_eps)
        init_weights(self, cfg.weight_std)
        for name in ("cls_token", "temporal_cls_token"):
            if getattr(self, name, None) is not None:
                nn.init.trunc_normal_(getattr(self, name), std=0.02)
        self._init_head(cfg.num_classes, cfg.head_drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clip -> normalised tokens: ``(B, P + N, D)``; model 2: ``(B, P + nt, D)`` temporal tokens
        (``(B, nt, D)`` frame representations when ``Lt = 0``)."""
        x, grid = self.patch_embed(x)
        if self.cfg.model != 2:
            grid = grid.replace(prefix=int(self.cls_token is not None))
            x = self.pos_embed(self.prepend(self.cls_token, x), grid)
            return self.norm(self.run_blocks(self.blocks, x, grid))
        B, nt = x.shape[0], grid.t
        x = rearrange(x, "b (t n) d -> (b t) n d", t=nt)  # spatial encoder: one sequence per temporal index
        sgrid = grid.replace(t=1, prefix=int(self.cls_token is not None))
        x = self.pos_embed(self.prepend(self.cls_token, x), sgrid)
        x = self.norm_spatial(self.run_blocks(self.blocks, x, sgrid))
        h = x[:, 0] if self.cls_token is not None else x.mean(dim=1)  # h_i
        h = rearrange(h, "(b t) d -> b t d", b=B)
        if not self.cfg.temporal_depth:
            return h
        tgrid = Grid(t=nt, h=1, w=1, prefix=int(self.temporal_cls_token is not None))
        h = self.temporal_pos_embed(self.prepend(self.temporal_cls_token, h), tgrid)
        return self.norm(self.run_blocks(self.temporal_blocks, h, tgrid))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.model == 2 and not self.cfg.temporal_depth:
            return x.mean(dim=1)  # average pooling baseline
        return x[:, 0] if self.cfg.classifier == "token" else x.mean(dim=1)  # CLS or global average pooling
