"""Multi Head Pooling Attention (MViT §3.1): Q, K and V pooled over ``(t, h, w)`` before the product.

``PA(·) = Softmax(P(Q; Θ_Q) P(K; Θ_K)ᵀ / √d) P(V; Θ_V)``, where the pooling operator ``P(·; k, s, p)`` reduces
an ``L = T×H×W`` grid to ``L̃ = ⌊(L + 2p − k)/s⌋ + 1`` coordinate-wise (MViT §3.1; floored where the stride
does not divide the grid, e.g. MViT-B at 112² or 144², as the official code). The grid size travels
with the tokens: ``forward(x, grid) -> x, grid`` returns the pooled grid. Prefix (CLS) tokens are never pooled.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from einops import rearrange
from torch import nn

from .attention import AttentionModule
from .grid import Grid

PoolMode = Literal["max", "avg", "conv"]
POOL_MODES = ("max", "avg", "conv")
Triple = tuple[int, int, int]


def default_kernel(stride: Sequence[int]) -> Triple:
    """Table 15's ``k = s + 1`` on every strided axis, ``k = 1`` where ``s = 1`` (as the official code)."""
    return tuple(s + 1 if s > 1 else 1 for s in stride)  # type: ignore[return-value]


def same_padding(kernel: Sequence[int], stride: Sequence[int]) -> Triple:
    """Shape-preserving padding: ``L̃ = L / s`` whenever ``s`` divides ``L`` (needs ``2p ∈ [k − s, k − 1]``)."""
    padding = tuple((k - 1) // 2 for k in kernel)
    for k, s, p in zip(kernel, stride, padding):
        if not k - s <= 2 * p <= k - 1:
            raise ValueError(f"kernel {tuple(kernel)} with stride {tuple(stride)} cannot preserve shape "
                             f"(needs k − s <= 2·((k − 1) // 2): an even kernel needs a stride > 1 on its axis)")
    return padding  # type: ignore[return-value]


def pooled_sizes(sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                 padding: Sequence[int]) -> Triple:
    """``⌊(L + 2p − k) / s⌋ + 1`` on each axis (MViT §3.1); ``ValueError`` if an axis is left with no token."""
    out = tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(sizes, kernel, stride, padding))
    if min(out) < 1:
        raise ValueError(f"a token grid T×H×W = {'×'.join(map(str, sizes))} is too small for pooling kernel "
                         f"{'×'.join(map(str, kernel))} (padding {'×'.join(map(str, padding))})")
    return out  # type: ignore[return-value]


class Pool(nn.Module):
    """The pooling operator ``P(·; k, s, p)`` over the ``(t, h, w)`` grid of ``(B, P + T·H·W, C)`` tokens.

    ``mode``: ``"max"`` / ``"avg"`` pooling, or ``"conv"``: a learnable channel-wise Conv3d (``groups = C``,
    no bias) followed by LayerNorm (MViT Table 15, the paper's best). The LayerNorm acts on every token, the
    prefix ones included, as in the official implementation; the prefix tokens themselves are never pooled.
    """

    def __init__(self, mode: PoolMode, channels: int, stride: Sequence[int], kernel: Sequence[int] | None = None,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        if mode not in POOL_MODES:
            raise ValueError(f"pooling mode must be one of {POOL_MODES}, got {mode!r}")
        self.stride = tuple(stride)
        self.kernel = tuple(kernel) if kernel is not None else default_kernel(stride)
        if len(self.stride) != 3 or len(self.kernel) != 3 or min(self.stride + self.kernel) < 1:
            raise ValueError(f"pooling kernel and stride must be 3 positive ints (t, h, w), "
                             f"got kernel {self.kernel}, stride {self.stride}")
        self.padding = same_padding(self.kernel, self.stride)
        self.mode = mode
        args = (self.kernel, self.stride, self.padding)
        if mode == "conv":
            self.pool: nn.Module = nn.Conv3d(channels, channels, *args, groups=channels, bias=False)
            self.norm: nn.Module | None = nn.LayerNorm(channels, eps=norm_eps)
        else:
            self.pool = nn.MaxPool3d(*args) if mode == "max" else nn.AvgPool3d(*args)
            self.norm = None

    def extra_repr(self) -> str:
        return f"mode={self.mode}, kernel={self.kernel}, stride={self.stride}, padding={self.padding}"

    def out_grid(self, grid: Grid) -> Grid:
        """The pooled grid, ``⌊(L + 2p − k) / s⌋ + 1`` per axis (MViT §3.1; ``L / s`` when ``s`` divides ``L``,
        floored otherwise, as PySlowFast's and torchvision's pooling); ``ValueError`` if an axis would vanish."""
        t, h, w = pooled_sizes((grid.t, grid.h, grid.w), self.kernel, self.stride, self.padding)
        return grid.replace(t=t, h=h, w=w)

    def forward(self, x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, Grid]:
        """``(B, P + T·H·W, C)`` -> ``(B, P + T̃·H̃·W̃, C)`` and the pooled grid."""
        grid.check(x)
        new = self.out_grid(grid)
        P = grid.prefix
        body = rearrange(x[:, P:], "b (t h w) c -> b c t h w", t=grid.t, h=grid.h, w=grid.w)
        body = rearrange(self.pool(body), "b c t h w -> b (t h w) c")  # (B, T̃·H̃·W̃, C)
        x = torch.cat([x[:, :P], body], dim=1)
        return (self.norm(x) if self.norm is not None else x), new


def make_pool(mode: PoolMode, channels: int, stride: Sequence[int], kernel: Sequence[int] | None = None,
              norm_eps: float = 1e-6) -> Pool | None:
    """A :class:`Pool`, or ``None`` when kernel and stride are both ``1×1×1`` (no pooling, as the official code)."""
    kernel = tuple(kernel) if kernel is not None else default_kernel(stride)
    if all(k == 1 for k in kernel) and all(s == 1 for s in stride):
        return None
    return Pool(mode, channels, stride, kernel, norm_eps)


class PoolingAttention(AttentionModule):
    """Multi Head Pooling Attention (MHPA, MViT §3.1 and Fig. 3).

    ``Q, K, V = X W_Q, X W_K, X W_V`` (one fused ``qkv`` Linear, q|k|v order, heads contiguous); each is pooled
    per head by its own :class:`Pool` over ``head_dim`` channels (the conv weights are shared by the heads,
    as in the official code); attention runs through :func:`~videoformer.layers.attention.attend`.
    ``forward`` returns the ``(B, P + L̃_Q, D)`` output and the grid of the pooled query.
    """

    def __init__(self, dim: int, num_heads: int, mode: PoolMode = "conv", stride_q: Sequence[int] = (1, 1, 1),
                 stride_kv: Sequence[int] = (1, 1, 1), kernel_q: Sequence[int] | None = None,
                 kernel_kv: Sequence[int] | None = None, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.pool_q = make_pool(mode, self.head_dim, stride_q, kernel_q, norm_eps)
        self.pool_k = make_pool(mode, self.head_dim, stride_kv, kernel_kv, norm_eps)
        self.pool_v = make_pool(mode, self.head_dim, stride_kv, kernel_kv, norm_eps)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop, self.proj_drop = attn_drop, nn.Dropout(proj_drop)

    @staticmethod
    def _pool(pool: Pool | None, x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, Grid]:
        return (x, grid) if pool is None else pool(x, grid)

    def forward(self, x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, Grid]:
        """``x``: normalised tokens ``(B, P + T·H·W, D)`` -> ``(B, P + T̃·H̃·W̃, D)`` and the query's grid."""
        grid.check(x)
        B = x.shape[0]
        q, k, v = rearrange(self.qkv(x), "b n (three k d) -> three (b k) n d", three=3, k=self.num_heads)
        q, grid_q = self._pool(self.pool_q, q, grid)  # (B·heads, P + L̃_Q, d)
        k, _ = self._pool(self.pool_k, k, grid)  # (B·heads, P + L̃_K, d)
        v, _ = self._pool(self.pool_v, v, grid)
        q, k, v = (rearrange(t, "(b k) n d -> b k n d", b=B) for t in (q, k, v))
        out = self.attend(q, k, v)  # (B, heads, P + L̃_Q, d)
        out = rearrange(out, "b k n d -> b n (k d)")
        return self.proj_drop(self.proj(out)), grid_q
