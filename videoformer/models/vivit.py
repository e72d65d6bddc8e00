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

from ..layers import Grid, Grouping, JointPosEmbed, Sublayer, TubeletEmbed, drop_path_rates
from .base import TransformerConfig, VideoModel, make_blocks
from .vit import fold_frames

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
    """ViViT models 1, 3 and 4 (§3.3): tubelets + CLS (model 1) + joint positions, the blocks of
    :meth:`sublayer_plan`, CLS or global average pooling. Model 2 is :class:`ViViTFactorisedEncoder`
    (:func:`build_vivit` builds either)."""

    def __init__(self, cfg: ViViTConfig) -> None:
        super().__init__()
        if cfg.model == 2:
            raise ValueError("ViViT model 2 is ViViTFactorisedEncoder; build it with build_vivit()")
        self.cfg, self.num_features, d = cfg, cfg.dim, cfg.dim
        self.patch_embed = TubeletEmbed(cfg.in_chans, d, (cfg.tubelet_t, cfg.patch_size, cfg.patch_size))
        nt, n = cfg.num_frames // cfg.tubelet_t, cfg.patches
        token = cfg.classifier == "token"
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if token else None
        self.pos_embed = JointPosEmbed(d, Grid(t=nt, h=n, w=n, prefix=int(token)), cfg.pos_std)
        self.blocks = make_blocks(cfg, self.sublayer_plan(cfg))
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.init_parameters(cfg)

    @staticmethod
    def sublayer_plan(cfg: ViViTConfig) -> list[tuple[Sublayer, ...]]:
        """The sublayers of each block of models 1, 3 and 4 (model 2: :class:`ViViTFactorisedEncoder`)."""
        space_time = (SPACE, TIME) if cfg.order == "st" else (TIME, SPACE)
        if cfg.model == 3:  # the temporal MSA the image ViT lacks starts as a residual no-op (§3.4)
            sublayers = tuple(Sublayer((g,), init="zero_output" if g == TIME else "pretrained") for g in space_time)
        else:
            sublayers = {1: (Sublayer((ALL,)),), 4: (Sublayer(space_time),)}[cfg.model]
        return [sublayers] * cfg.depth

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clip -> normalised tokens ``(B, P + N, D)``."""
        x, grid = self.embed(*self.patch_embed(x), self.cls_token, self.pos_embed)
        return self.norm(self.run_blocks(self.blocks, x, grid))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.cls_token is not None else x.mean(dim=1)  # CLS or global average pooling


class ViViTFactorisedEncoder(VideoModel):
    """ViViT model 2: a spatial ViT over the tokens of each temporal index (frames folded into the batch, as
    the frame-wise ViT), CLS or average -> ``h_i``; then a temporal encoder of ``Lt`` blocks over
    ``[h_1 .. h_nt]``, or, with ``Lt = 0``, the average of ``h_i`` (Table 2 baseline)."""

    image_norm = "norm_spatial"  # an image ViT initialises the spatial encoder, its final norm included

    def __init__(self, cfg: ViViTConfig) -> None:
        super().__init__()
        if cfg.model != 2:
            raise ValueError(f"ViViTFactorisedEncoder is ViViT model 2, got model {cfg.model}")
        self.cfg, self.num_features, d = cfg, cfg.dim, cfg.dim
        self.patch_embed = TubeletEmbed(cfg.in_chans, d, (cfg.tubelet_t, cfg.patch_size, cfg.patch_size))
        nt, n = cfg.num_frames // cfg.tubelet_t, cfg.patches
        rates = drop_path_rates(cfg.drop_path_rate, cfg.depth + cfg.temporal_depth)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.spatial_pool == "token" else None
        self.pos_embed = JointPosEmbed(d, Grid(t=1, h=n, w=n, prefix=int(self.cls_token is not None)),
                                       cfg.pos_std)
        self.blocks = make_blocks(cfg, [(Sublayer((ALL,)),)] * cfg.depth, rates[: cfg.depth])
        self.norm_spatial = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.temporal_cls_token = None
        if cfg.temporal_depth:
            token = cfg.classifier == "token"
            self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, d)) if token else None
            self.temporal_pos_embed = JointPosEmbed(d, Grid(t=nt, h=1, w=1, prefix=int(token)), cfg.pos_std)
            self.temporal_blocks = make_blocks(cfg, [(Sublayer((TIME,)),)] * cfg.temporal_depth,
                                               rates[cfg.depth:])
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.temporal_depth else nn.Identity()
        self.init_parameters(cfg)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clip -> normalised temporal tokens ``(B, P + nt, D)`` (``(B, nt, D)`` frame representations when
        ``Lt = 0``)."""
        x, grid = self.embed(*fold_frames(*self.patch_embed(x)), self.cls_token, self.pos_embed)
        x = self.norm_spatial(self.run_blocks(self.blocks, x, grid))
        h = x[:, 0] if self.cls_token is not None else x.mean(dim=1)  # h_i
        h = rearrange(h, "(b t) d -> b t d", t=grid.frames)
        if not self.cfg.temporal_depth:
            return h
        h, tgrid = self.embed(h, Grid(t=grid.frames, h=1, w=1), self.temporal_cls_token, self.temporal_pos_embed)
        return self.norm(self.run_blocks(self.temporal_blocks, h, tgrid))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.temporal_cls_token is not None else x.mean(dim=1)  # CLS, GAP or the h_i average


def build_vivit(cfg: ViViTConfig) -> VideoModel:
    """ViViT of any model: 1, 3, 4 :class:`ViViT`; 2 :class:`ViViTFactorisedEncoder`."""
    return ViViTFactorisedEncoder(cfg) if cfg.model == 2 else ViViT(cfg)
