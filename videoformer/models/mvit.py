"""Multiscale Vision Transformers (Fan et al., 2021), MViT v1: stages of pooling-attention blocks that shrink
the space-time resolution while growing the channels (MViT §3.2, Table 2).

cube₁: an overlapping Conv3d (3×7×7, stride 2×4×4 for MViT-B) to ``D`` channels, a CLS token and positional
embeddings (separate space and time by default; Table 11's none / space-only / joint selectable). Each stage
is a list of :class:`MultiscaleBlock`: the first block of every stage but the first pools Q (stride 1×2×2) and
its residual; every block pools K/V with a stride that shrinks as the stage's resolution does, so K/V stay
at one resolution (Table 14, "adaptive"). The last block of a stage widens its MLP output (channel expansion)
and its skip goes through LayerNorm + Linear (Fig. A.5a). Heads grow with the channels. Head: CLS -> Linear.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..layers import DropPath, Grid, JointPosEmbed, Mlp, SeparablePosEmbed, check_video, drop_path_rates
from ..layers.pooling import (POOL_MODES, PoolingAttention, PoolMode, Triple, default_kernel, make_pool,
                              pooled_sizes, same_padding)
from .base import TransformerConfig, VideoModel

PosEmbedKind = Literal["none", "space", "joint", "separable"]
POS_EMBEDS = ("none", "space", "joint", "separable")


@dataclass
class MViTConfig(TransformerConfig):
    """MViT-B 16×4 (Table 3b, stages V5 of Table 13) with conv pooling of Table 15's ``k = s + 1`` kernels by
    default; the registered ``mvit_b_16x4`` is the released model, 3×3×3 kernels (Table 15's last row).

    ``dim`` / ``num_heads``: channels and heads of the first stage, multiplied by ``dim_mul`` / ``head_mul`` at
    every stage transition. ``patch_size``: spatial stride of the cube projection. ``kv_stride``: K/V pooling
    stride of the first stage, divided by ``q_stride`` at each transition (floored at 1). ``pool_kernel``:
    one kernel for every pooling operator, K/V pools at stride 1 included (``(3, 3, 3)``: MViT-B 16×4 as
    released); ``None`` is Table 15's ``k = s + 1`` on strided axes (no pooling at stride 1). Grids the strides do
    not divide are floored (§3.1's ``⌊(L + 2p − k)/s⌋ + 1``, as PySlowFast). ``pool_norm_eps``: epsilon of the
    conv-pooling LayerNorms (PySlowFast's 2021 release used 1e-5 there, its later code and torchvision 1e-6).
    ``depth`` is filled from ``stage_depths``.
    """

    num_frames: int = 16
    patch_size: int = 4
    dim: int = 96
    depth: int = 0
    # the channels grow to 768: ViT's 0.02 throughout, the positional embeddings as ViT-B (time: zeros)
    init_std: float | None = 0.02
    pos_embed_std: float | None = 0.02
    time_embed_std: float | None = 0.0
    num_heads: int = 1
    stage_depths: tuple[int, ...] = (1, 2, 11, 2)
    cube_kernel: Triple = (3, 7, 7)
    cube_stride_t: int = 2
    pool_mode: PoolMode = "conv"
    pool_kernel: Triple | None = None
    pool_norm_eps: float = 1e-6
    q_stride: Triple = (1, 2, 2)
    kv_stride: Triple = (1, 8, 8)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    pos_embed: PosEmbedKind = "separable"
    stage_dims: tuple[int, ...] = field(init=False, default=())
    stage_heads: tuple[int, ...] = field(init=False, default=())
    stage_kv_strides: tuple[Triple, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool_mode not in POOL_MODES or self.pos_embed not in POS_EMBEDS:
            raise ValueError(f"pool_mode must be one of {POOL_MODES} and pos_embed one of {POS_EMBEDS}, "
                             f"got {self.pool_mode!r}, {self.pos_embed!r}")
        if not self.stage_depths or min(self.stage_depths) < 1:
            raise ValueError(f"stage_depths must be positive block counts, got {self.stage_depths}")
        if self.depth not in (0, sum(self.stage_depths)):
            raise ValueError(f"depth={self.depth} disagrees with sum(stage_depths={self.stage_depths})")
        if self.num_frames % self.cube_stride_t:
            raise ValueError(f"num_frames={self.num_frames} is not divisible by cube_stride_t={self.cube_stride_t}")
        same_padding(self.cube_kernel, (self.cube_stride_t, self.patch_size, self.patch_size))
        self.depth = sum(self.stage_depths)
        n = len(self.stage_depths)
        self.stage_dims = tuple(round(self.dim * self.dim_mul**i) for i in range(n))
        self.stage_heads = tuple(round(self.num_heads * self.head_mul**i) for i in range(n))
        for d, h in zip(self.stage_dims, self.stage_heads):
            if d % h:
                raise ValueError(f"stage width {d} is not divisible by its {h} heads")
        strides = [tuple(self.kv_stride)]
        for _ in range(n - 1):
            strides.append(tuple(max(s // q, 1) for s, q in zip(strides[-1], self.q_stride)))
        self.stage_kv_strides = tuple(strides)  # type: ignore[assignment]
        sizes = (self.grid.t, self.grid.h, self.grid.w)
        for i, kv in enumerate(self.stage_kv_strides):  # fail here, not at the first clip
            if i:
                sizes = self._pooled(sizes, self.q_stride, f"stage {i + 1}: Q")
            self._pooled(sizes, kv, f"stage {i + 1}: K/V")

    def _pooled(self, sizes: Triple, stride: Triple, what: str) -> Triple:
        """Grid ``sizes`` after a pooling of ``stride`` with this config's kernel (floored, as the model does)."""
        kernel = self.pool_kernel or default_kernel(stride)
        try:
            return pooled_sizes(sizes, kernel, stride, same_padding(kernel, stride))
        except ValueError as err:
            raise ValueError(f"{what} pooling: {err}") from err

    @property
    def grid(self) -> Grid:
        """Token grid after the cube projection of a ``num_frames × img_size²`` clip, with the CLS token."""
        n = self.img_size // self.patch_size
        return Grid(t=self.num_frames // self.cube_stride_t, h=n, w=n, prefix=1)


class CubeEmbed(nn.Module):
    """cube₁ (MViT Table 2): overlapping ``c_T×c_H×c_W`` cubes, stride ``s_T×s_H×s_W``, shape-preserving
    padding (``(c − 1) // 2``: 1×3×3 for MViT-B's 3×7×7), so a clip of ``T×H×W`` gives ``T/s_T × H/s_H × W/s_W``."""

    def __init__(self, in_chans: int, dim: int, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.in_chans, self.stride = in_chans, tuple(stride)
        self.proj = nn.Conv3d(in_chans, dim, kernel, stride, padding=same_padding(kernel, stride))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        """``(B, C, T, H, W)`` -> tokens ``(B, T/s_T · H/s_H · W/s_W, D)`` in ``(t h w)`` order, and their grid."""
        check_video(x, self.in_chans)
        sizes = tuple(x.shape[2:])
        if any(n % s for n, s in zip(sizes, self.stride)):
            raise ValueError(f"clip T×H×W = {'×'.join(map(str, sizes))} is not divisible by the cube stride "
                             f"{'×'.join(map(str, self.stride))}")
        y = self.proj(x)  # (B, D, T', H', W')
        return y.flatten(2).transpose(1, 2), Grid(t=y.shape[2], h=y.shape[3], w=y.shape[4])


class MultiscaleBlock(nn.Module):
    """``X₁ = P(X; Θ_Q) + MHPA(LN(X))``, ``Block(X) = skip(X₁) + MLP(LN(X₁))`` (MViT §3.2, Fig. 3).

    When the query is pooled the residual is pooled alike (max pooling, kernel ``s + 1``, as the official code).
    When ``dim_out != dim`` (last block of a stage) the MLP widens the channels and the skip is
    ``Linear(LN(X₁))`` on the same normalised input (Fig. A.5a, "normalised skip").
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, mode: PoolMode, stride_q: Triple,
                 stride_kv: Triple, kernel_q: Triple | None, kernel_kv: Triple | None, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path: float = 0.0, drop: float = 0.0, attn_drop: float = 0.0,
                 act: str = "gelu", norm_eps: float = 1e-6, pool_norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = PoolingAttention(dim, num_heads, mode, stride_q, stride_kv, kernel_q, kernel_kv, qkv_bias,
                                     attn_drop, drop, pool_norm_eps)
        self.pool_skip = make_pool("max", dim, stride_q)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act, drop=drop, out_dim=dim_out)
        self.proj = nn.Linear(dim, dim_out) if dim_out != dim else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, Grid]:
        """``(B, P + T·H·W, D)`` -> ``(B, P + T̃·H̃·W̃, D_out)`` and the block's output grid."""
        out, grid_q = self.attn(self.norm1(x), grid)
        skip = x if self.pool_skip is None else self.pool_skip(x, grid)[0]
        x = skip + self.drop_path(out)
        normed = self.norm2(x)
        skip = x if self.proj is None else self.proj(normed)
        return skip + self.drop_path(self.mlp(normed)), grid_q


class MViT(VideoModel):
    """MViT v1 (Table 2 / 3): cube₁, CLS token, positional embedding, scale stages, LayerNorm, CLS -> head."""

    def __init__(self, cfg: MViTConfig) -> None:
        super().__init__()
        self.cfg, d = cfg, cfg.dim
        self.patch_embed = CubeEmbed(cfg.in_chans, d, cfg.cube_kernel,
                                     (cfg.cube_stride_t, cfg.patch_size, cfg.patch_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed: nn.Module | None = {
            "none": lambda: None,
            "space": lambda: SeparablePosEmbed(d, cfg.grid, cfg.pos_std, time=False),
            "joint": lambda: JointPosEmbed(d, cfg.grid, cfg.pos_std),
            "separable": lambda: SeparablePosEmbed(d, cfg.grid, cfg.pos_std, time_std=cfg.time_std),
        }[cfg.pos_embed]()
        rates, blocks = iter(drop_path_rates(cfg.drop_path_rate, cfg.depth)), []
        n_stages, no_stride = len(cfg.stage_depths), (1, 1, 1)
        for i, depth in enumerate(cfg.stage_depths):
            dim, heads, stride_kv = cfg.stage_dims[i], cfg.stage_heads[i], cfg.stage_kv_strides[i]
            for j in range(depth):
                stride_q = cfg.q_stride if (i > 0 and j == 0) else no_stride
                last = j == depth - 1 and i < n_stages - 1
                blocks.append(MultiscaleBlock(
                    dim, cfg.stage_dims[i + 1] if last else dim, heads, cfg.pool_mode, stride_q, stride_kv,
                    cfg.pool_kernel if stride_q != no_stride else None, cfg.pool_kernel, cfg.mlp_ratio,
                    cfg.qkv_bias, next(rates), cfg.drop_rate, cfg.attn_drop_rate, cfg.act, cfg.norm_eps,
                    cfg.pool_norm_eps))
        self.blocks = nn.ModuleList(blocks)
        self.num_features = cfg.stage_dims[-1]
        self.norm = nn.LayerNorm(self.num_features, eps=cfg.norm_eps)
        self.init_parameters(cfg)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> normalised tokens ``(B, 1 + T̃·H̃·W̃, D_last)`` of the last stage."""
        x, grid = self.embed(*self.patch_embed(x), self.cls_token, self.pos_embed)
        for block in self.blocks:  # blocks pool the grid, so each returns its new size
            x, grid = self.run_block(block, x, grid)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]  # CLS token
