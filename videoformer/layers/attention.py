"""The one attention core: scaled dot-product attention over any subset of the grid axes.

``attend`` holds the single call site of ``F.scaled_dot_product_attention`` in the library, with a manual
(math) path selectable for tests (:func:`fused_attention`). Inference in bf16 / fp16 on the CPU takes a
chunked math path instead of SDPA (:func:`_attend_cpu_half`): PyTorch's CPU flash kernel computes in fp32 and
is 1.4-2.5× slower there than bf16 matmuls + softmax, from TimeSformer's 8-frame temporal sequences to
ViViT's 3137-token ones (``benchmarks/README.md``). ``AxisAttention`` is multi-head self-attention
(ViViT Eq. 7) whose head groups each attend over a :class:`~videoformer.layers.grid.Grouping` of the grid;
one head group over all axes is joint attention, one over ``(h, w)`` is spatial attention, two groups with
``(h, w)`` and ``(t,)`` is ViViT model 4 (factorised dot-product attention).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .grid import Grid, Grouping
from .linear import apply_linear, derived, linear

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


_HALF = (torch.bfloat16, torch.float16)
_SCORE_BYTES = 1 << 20  # score-tensor budget of one chunk of the CPU half-precision path (about L2-sized)


def _cpu_half_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.dtype | None:
    """The bf16 / fp16 dtype an inference-only CPU attention call computes in (inputs or autocast), else None."""
    if q.device.type != "cpu" or (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        return None
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in _HALF:
        return torch.get_autocast_dtype("cpu")
    return q.dtype if q.dtype in _HALF and k.dtype == v.dtype == q.dtype else None


def _attend_cpu_half(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float,
                     dtype: torch.dtype) -> torch.Tensor:
    """softmax(Q Kᵀ / √d_k) V as bf16 / fp16 batched matmuls (fp32 accumulation inside the GEMM) and a
    softmax, over chunks of the ``B·heads`` sequences (and of the query rows of long ones) whose scores fit
    :data:`_SCORE_BYTES`: scores that stay in the core's cache make the spatial attention of TimeSformer-B
    2.2× and ViViT-B's joint attention 1.6× faster than one 7-16 MB score tensor."""
    lead, (lq, d), lk = q.shape[:-2], q.shape[-2:], k.shape[-2]
    q = (q.to(dtype) * d ** -0.5).reshape(-1, lq, d)
    k, v = k.to(dtype).reshape(-1, lk, d), v.to(dtype).reshape(-1, lk, v.shape[-1])
    out = q.new_empty(q.shape[0], lq, v.shape[-1])
    row_bytes = lk * q.element_size()
    rows = min(lq, max(1, _SCORE_BYTES // row_bytes))  # query rows per chunk
    step = max(1, _SCORE_BYTES // (rows * row_bytes)) if rows == lq else 1  # sequences per chunk
    for i in range(0, q.shape[0], step):
        keys, values = k[i : i + step].transpose(1, 2), v[i : i + step]
        for j in range(0, lq, rows):
            weights = torch.bmm(q[i : i + step, j : j + rows], keys).softmax(dim=-1)
            weights = F.dropout(weights, p=dropout_p) if dropout_p else weights
            torch.bmm(weights, values, out=out[i : i + step, j : j + rows])
    return out.reshape(*lead, lq, v.shape[-1])


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(Q Kᵀ / √d_k) V (ViViT Eq. 7) on ``(B, heads, L, d)`` tensors."""
    if _FUSED and not _RECORDERS:
        half = _cpu_half_dtype(q, k, v)
        if half is not None:
            return _attend_cpu_half(q, k, v, dropout_p, half)
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
            TimeSformer's divided attention, zero-initialisable so the block starts as the image ViT). In eval
            mode without autograd the two run as one linear layer (:meth:`folded_proj`).
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

    def folded_proj(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``fc ∘ proj`` as one linear layer: ``W = W_fc W_proj``, ``b = W_fc b_proj + b_fc``; cached until a
        weight changes (:func:`~videoformer.layers.linear.derived`)."""
        return derived(self, "fold", (self.proj.weight, self.proj.bias, self.fc.weight, self.fc.bias),
                       lambda: (self.fc.weight @ self.proj.weight,
                                torch.addmv(self.fc.bias, self.fc.weight, self.proj.bias)))

    def _project(self, out: torch.Tensor) -> torch.Tensor:
        """Output projection (and the extra one). Folded in eval mode without autograd, unless a dispatch mode
        (the MAC counter, ``FlopCounterMode``, tracing) watches the ops: it sees the model as defined."""
        if self.fc is None:
            return self.proj_drop(apply_linear(self.proj, out))
        if self.training or torch.is_grad_enabled() or torch._C._len_torch_dispatch_stack():
            return self.fc(self.proj_drop(self.proj(out)))
        return linear(out, *self.folded_proj(), owner=self, tag="fold")

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, groupings={self.groupings}, prefix={self.prefix}"

    def _attend_group(self, qkv: torch.Tensor, grid: Grid, grouping: Grouping) -> torch.Tensor:
        """``qkv``: ``(B, P + N, 3, heads_g, d)`` -> ``(B, P + N, heads_g, d)`` attention outputs.

        The sequences of :meth:`Grouping.group` (same order) are gathered with one strided copy into
        ``(3, B·groups, heads_g, P + L, d)`` and the outputs scattered back with one, instead of einops round
        trips through ``(B·groups, L, 3·D)`` (~10 % of a TimeSformer-B sublayer's time in bf16)."""
        B, P, K, d = qkv.shape[0], grid.prefix, qkv.shape[3], qkv.shape[4]
        src, batch, seq, sizes = grouping.layout(grid)
        n, b_sizes, s_sizes = len(src), [sizes[a] for a in batch], [sizes[a] for a in seq]
        groups, length = math.prod(b_sizes), math.prod(s_sizes)
        b_dims, s_dims = [1 + src.index(a) for a in batch], [1 + src.index(a) for a in seq]
        body = qkv[:, P:].unflatten(1, [sizes[a] for a in src])  # (B, *src axes, 3, K, d)
        gathered = qkv.new_empty(3, B * groups, K, P + length, d)
        gathered[:, :, :, P:].unflatten(3, s_sizes).unflatten(1, [B, *b_sizes]).copy_(
            body.permute(n + 1, 0, *b_dims, n + 2, *s_dims, n + 3))
        if P:  # every sequence also sees the prefix tokens
            gathered[:, :, :, :P].unflatten(1, (B, groups)).copy_(qkv[:, :P].permute(2, 0, 3, 1, 4).unsqueeze(2))
        out = attend(*gathered.unbind(0), self.attn_drop if self.training else 0.0)  # (B·groups, K, P + L, d)
        result = out.new_empty(B, P + grid.numel, K, d)
        result[:, P:].unflatten(1, [sizes[a] for a in src]).permute(0, *b_dims, n + 1, *s_dims, n + 2).copy_(
            out[:, :, P:].unflatten(2, s_sizes).unflatten(0, [B, *b_sizes]))
        if P:  # prefix outputs averaged over the sequences
            result[:, :P] = out[:, :, :P].unflatten(0, (B, groups)).mean(dim=1).transpose(1, 2)
        return result

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``x``: normalised tokens ``(B, P + N, D)``; returns the residual update of the same shape."""
        grid.check(x)
        keep = x[:, : grid.prefix] if self.prefix == "exclude" else None
        if keep is not None:
            x, grid = x[:, grid.prefix :], grid.replace(prefix=0)
        qkv = rearrange(apply_linear(self.qkv, x), "b n (three k d) -> b n three k d", three=3, d=self.head_dim)
        heads = qkv.chunk(len(self.groupings), dim=3)
        outs = [self._attend_group(h, grid, g) for h, g in zip(heads, self.groupings)]
        out = (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)).flatten(2)
        out = self._project(out)
        if keep is not None:  # prefix tokens receive no update
            out = torch.cat([torch.zeros_like(keep), out], dim=1)
        return out
