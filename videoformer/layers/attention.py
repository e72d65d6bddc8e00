"""The one attention core: scaled dot-product attention over any subset of the grid axes.

``attend`` holds the single call site of ``F.scaled_dot_product_attention`` in the library, with a manual
(math) path selectable for tests (:func:`fused_attention`). ``AxisAttention`` is multi-head self-attention
(ViViT Eq. 7) whose head groups each attend over a :class:`~videoformer.layers.grid.Grouping` of the grid;
one head group over all axes is joint attention, one over ``(h, w)`` is spatial attention, two groups with
``(h, w)`` and ``(t,)`` is ViViT model 4 (factorised dot-product attention).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .grid import Grid, Grouping

_FUSED = True
_RECORDERS: list[Callable[[torch.Tensor], None]] = []


@contextlib.contextmanager
def fused_attention(enabled: bool) -> Iterator[None]:
    """Select the fused SDPA kernel (``True``) or the manual softmax(QKᵀ/√d)V path inside the block."""
    global _FUSED
    previous, _FUSED = _FUSED, enabled
    try:
        yield
    finally:
        _FUSED = previous


@contextlib.contextmanager
def record_attention(callback: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """Inside the block, every :func:`attend` call takes the manual path and passes its softmax weights
    ``(B, heads, L_q, L_k)`` (before dropout) to ``callback`` (attention rollout)."""
    _RECORDERS.append(callback)
    try:
        yield
    finally:
        _RECORDERS.remove(callback)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(Q Kᵀ / √d_k) V (ViViT Eq. 7) on ``(B, heads, L, d)`` tensors."""
    if _FUSED and not _RECORDERS:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    weights = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    for callback in _RECORDERS:
        callback(weights)
    weights = F.dropout(weights, p=dropout_p)
    return weights @ v


PrefixMode = Literal["replicate", "exclude"]


class AxisAttention(nn.Module):
    """Multi-head self-attention whose head groups attend over chosen grid axes.

    Args:
        dim: token width ``d``.
        num_heads: total heads; split evenly over ``groupings``.
        groupings: one :class:`Grouping` per head group (ViViT model 4 uses two: space and time).
        prefix: ``"replicate"``: prefix (CLS) tokens join every sequence as keys and queries and their outputs
            are averaged over the sequences (TimeSformer spatial attention; exact joint attention when there is
            a single sequence). ``"exclude"``: prefix tokens are left untouched (TimeSformer temporal attention).
        extra_proj: add a second ``d×d`` projection after the output projection (the ``temporal_fc`` of
            TimeSformer's divided attention, zero-initialisable so the block starts as the image ViT).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        groupings: Sequence[Grouping],
        prefix: PrefixMode = "replicate",
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        extra_proj: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads or num_heads % len(groupings):
            raise ValueError(
                f"dim={dim} must divide into num_heads={num_heads}, and heads into {len(groupings)} head groups"
            )
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.groupings, self.prefix = tuple(groupings), prefix
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, dim) if extra_proj else None
        self.attn_drop, self.proj_drop = attn_drop, nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, groupings={self.groupings}, prefix={self.prefix}"

    def _attend_group(self, qkv: torch.Tensor, grid: Grid, grouping: Grouping) -> torch.Tensor:
        """``qkv``: ``(B, P + N, 3, heads_g, d)`` -> ``(B, P + N, heads_g * d)`` attention outputs."""
        B, P = qkv.shape[0], grid.prefix
        body = grouping.group(rearrange(qkv[:, P:], "b n three k d -> b n (three k d)"), grid)
        groups = body.shape[0] // B
        if P:  # every sequence also sees the prefix tokens
            pre = rearrange(qkv[:, :P], "b p three k d -> b p (three k d)")
            body = torch.cat([pre.repeat_interleave(groups, dim=0), body], dim=1)
        q, k, v = rearrange(body, "bg l (three k d) -> three bg k l d", three=3, d=self.head_dim)
        out = attend(q, k, v, self.attn_drop if self.training else 0.0)
        out = rearrange(out, "bg k l d -> bg l (k d)")
        grid_out = grouping.ungroup(out[:, P:], grid)
        if not P:
            return grid_out
        pre_out = rearrange(out[:, :P], "(b g) p c -> b g p c", b=B).mean(dim=1)  # average over sequences
        return torch.cat([pre_out, grid_out], dim=1)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``x``: normalised tokens ``(B, P + N, D)``; returns the residual update of the same shape."""
        grid.check(x)
        keep = x[:, : grid.prefix] if self.prefix == "exclude" else None
        if keep is not None:
            x, grid = x[:, grid.prefix :], grid.replace(prefix=0)
        qkv = rearrange(self.qkv(x), "b n (three k d) -> b n three k d", three=3, d=self.head_dim)
        heads = qkv.chunk(len(self.groupings), dim=3)
        out = torch.cat([self._attend_group(h, grid, g) for h, g in zip(heads, self.groupings)], dim=-1)
        out = self.proj_drop(self.proj(out))
        if self.fc is not None:
            out = self.fc(out)
        if keep is not None:  # prefix tokens receive no update
            out = torch.cat([torch.zeros_like(keep), out], dim=1)
        return out
