"""The one attention core: scaled dot-product attention over any subset of the grid axes.

``attend`` holds the single call site of ``F.scaled_dot_product_attention`` in the library, with a manual
(math) path for tests and for recording the attention weights. Which path a module takes is the module's own
state (``fused``, ``recorder`` of :class:`AttentionModule`), set for a whole model by :func:`fused_attention`
and :func:`record_attention`; nothing global, so two models (or threads) never see each other's setting and
``torch.compile`` traces plain attributes. ``AxisAttention`` is multi-head self-attention (ViViT Eq. 7) built
from a :class:`~videoformer.layers.spec.Sublayer`: its head groups each attend over a
:class:`~videoformer.layers.grid.Grouping` of the grid; one head group over all axes is joint attention, one over
``(h, w)`` spatial attention, two groups with ``(h, w)`` and ``(t,)`` ViViT model 4.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .grid import Grid, Grouping
from .spec import SHIFT_MERGE, PrefixMode, Sublayer

Recorder = Callable[[torch.Tensor], None]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
           mask: torch.Tensor | None = None, fused: bool = True, record: Recorder | None = None) -> torch.Tensor:
    """softmax(Q Kᵀ / √d_k) V (ViViT Eq. 7) on ``(B, heads, L, d)`` tensors.

    ``mask``: boolean ``(L_q, L_k)``, ``True`` where a query may attend. ``fused=False`` or a ``record``
    callback take the manual path; ``record`` receives the softmax weights ``(B, heads, L_q, L_k)`` before dropout.
    """
    if fused and record is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    weights = logits.softmax(dim=-1)
    if record is not None:
        record(weights)
    weights = F.dropout(weights, p=dropout_p)
    return weights @ v


class AttentionModule(nn.Module):
    """A module that calls :func:`attend`: ``fused`` and ``recorder`` are its own settings."""

    fused: bool = True
    recorder: Recorder | None = None
    attn_drop: float = 0.0

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        return attend(q, k, v, self.attn_drop if self.training else 0.0, mask, self.fused, self.recorder)


@contextlib.contextmanager
def _set_on(modules: Sequence[nn.Module], name: str, value: object, who: str) -> Iterator[None]:
    if not modules:
        raise TypeError(f"{who} needs the model(s) whose attention it applies to, e.g. {who}(..., model)")
    targets = [m for root in modules for m in root.modules() if isinstance(m, AttentionModule)]
    previous = [m.__dict__.get(name, _UNSET) for m in targets]
    for m in targets:
        setattr(m, name, value)
    try:
        yield
    finally:
        for m, old in zip(targets, previous):
            if old is _UNSET:
                delattr(m, name)
            else:
                setattr(m, name, old)


_UNSET = object()


def fused_attention(enabled: bool, *modules: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Inside the block, the attention of ``modules`` takes the fused SDPA kernel (``True``) or the manual
    softmax(QKᵀ/√d)V path (``False``)."""
    return _set_on(modules, "fused", enabled, "fused_attention")


def record_attention(callback: Recorder, *modules: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Inside the block, every attention call of ``modules`` takes the manual path and passes its softmax
    weights ``(B, heads, L_q, L_k)`` (before dropout) to ``callback`` (attention rollout)."""
    return _set_on(modules, "recorder", callback, "record_attention")


class AxisAttention(AttentionModule):
    """Multi-head self-attention whose head groups attend over chosen grid axes, as a :class:`Sublayer` says.

    Args:
        dim: token width ``d``.
        num_heads: total heads; split evenly over the spec's groupings.
        spec: the :class:`Sublayer`, or just its groupings (then ``prefix`` and ``extra_proj`` complete it).

    Parameters: ``qkv`` (fused, q | k | v rows, heads contiguous), ``proj``, the extra projection ``fc`` when
    ``spec.extra_proj`` (zero-initialisable so the block starts as the image ViT) and the depthwise ``conv`` of
    a :class:`~videoformer.layers.spec.WindowConv` post-op.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        spec: Sublayer | Sequence[Grouping],
        prefix: PrefixMode = "replicate",
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        extra_proj: bool = False,
    ) -> None:
        super().__init__()
        self.spec = spec if isinstance(spec, Sublayer) else Sublayer(tuple(spec), prefix, extra_proj)
        groups = len(self.spec.groupings)
        if dim % num_heads or num_heads % groups:
            raise ValueError(f"dim={dim} must divide into num_heads={num_heads}, and heads into {groups} head groups")
        if hasattr(self.spec.qkv_hook, "check"):
            self.spec.qkv_hook.check(self.spec, num_heads)
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, dim) if self.spec.extra_proj else None
        self.attn_drop, self.proj_drop = attn_drop, nn.Dropout(proj_drop)
        if self.spec.post is not None:
            kernel = self.spec.post.kernel
            self.conv = nn.Conv3d(dim, dim, kernel, groups=dim)
            # "same" padding, the extra zero of an even kernel after the end: (w before, w after, h ..., t ...)
            self.padding = tuple(p for k in reversed(kernel) for p in ((k - 1) // 2, k // 2))
            self.reset_conv()

    @property
    def groupings(self) -> tuple[Grouping, ...]:
        return self.spec.groupings

    @property
    def prefix(self) -> PrefixMode:
        return self.spec.prefix

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, spec={self.spec}"

    def reset_conv(self) -> None:
        """Identity window convolution: a one at the tap aligned with the output position (``(k - 1) // 2``)."""
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[(slice(None), 0, *((k - 1) // 2 for k in self.conv.kernel_size))] = 1.0
            self.conv.bias.zero_()

    def _attend_group(self, qkv: torch.Tensor, grid: Grid, grouping: Grouping) -> torch.Tensor:
        """``qkv``: ``(B, P + N, 3, heads_g, d)`` -> ``(B, P + N, heads_g * d)`` attention outputs."""
        if grouping.is_whole(grid):  # one sequence, prefix tokens in place: no regrouping, no copies
            q, k, v = rearrange(qkv, "b n three k d -> three b k n d")
            mask = None if self.spec.mask is None else self.spec.mask(q.shape[2], q.device)
            return rearrange(self.attend(q, k, v, mask), "b k n d -> b n (k d)")
        B, P = qkv.shape[0], grid.prefix
        body = grouping.group(rearrange(qkv[:, P:], "b n three k d -> b n (three k d)"), grid)
        groups = body.shape[0] // B
        if P:  # every sequence also sees the prefix tokens
            pre = rearrange(qkv[:, :P], "b p three k d -> b p (three k d)")
            body = torch.cat([pre.repeat_interleave(groups, dim=0), body], dim=1)
        q, k, v = rearrange(body, "bg l (three k d) -> three bg k l d", three=3, d=self.head_dim)
        mask = None if self.spec.mask is None else self.spec.mask(q.shape[2], q.device)
        out = self.attend(q, k, v, mask)
        out = rearrange(out, "bg k l d -> bg l (k d)")
        grid_out = grouping.ungroup(out[:, P:], grid)
        if not P:
            return grid_out
        pre_out = rearrange(out[:, :P], "(b g) p c -> b g p c", b=B).mean(dim=1)  # average over sequences
        return torch.cat([pre_out, grid_out], dim=1)

    def _window_conv(self, out: torch.Tensor, grid: Grid) -> torch.Tensor:
        """The post-op on the grid outputs, per modality; prefix outputs pass."""
        P = grid.prefix
        body = rearrange(out[:, P:], "b (m t h w) c -> (b m) c t h w", **grid.sizes)
        body = self.conv(F.pad(body, self.padding))
        body = rearrange(body, "(b m) c t h w -> b (m t h w) c", m=grid.m)
        return torch.cat([out[:, :P], body], dim=1)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``x``: normalised tokens ``(B, P + N, D)``; returns the residual update of the same shape."""
        grid.check(x)
        keep = x[:, : grid.prefix] if self.spec.prefix == "exclude" else None
        if keep is not None:
            x, grid = x[:, grid.prefix :], grid.replace(prefix=0)
        qkv = rearrange(self.qkv(x), "b n (three k d) -> b n three k d", three=3, d=self.head_dim)
        if self.spec.qkv_hook is not None:
            qkv = self.spec.qkv_hook(qkv, grid)
        if len(self.spec.groupings) == 1:
            out = self._attend_group(qkv, grid, self.spec.groupings[0])
        else:
            heads = qkv.chunk(len(self.spec.groupings), dim=3)
            out = torch.cat([self._attend_group(h, grid, g) for h, g in zip(heads, self.spec.groupings)], dim=-1)
        out = self.proj_drop(self.proj(out))
        if self.fc is not None:
            out = self.fc(out)
        if self.spec.post is not None:
            out = self._window_conv(out, grid)
        if keep is not None:  # prefix tokens receive no update
            out = torch.cat([torch.zeros_like(keep), out], dim=1)
        return out


class ShiftMerge(nn.Module):
    """Shift-merge attention (MM-ViT Eq. 17-20): no queries or keys; each modality's value ``v^s`` is split
    into ``|S|`` portions and modality ``i`` receives portion ``i`` of every modality (concatenated in modality
    order) plus its own value, ``r^i = v_i^1 ‖ … ‖ v_i^|S| + v^i``; then the output and extra projections.
    Prefix tokens receive no update."""

    def __init__(self, dim: int, qkv_bias: bool = True, proj_drop: float = 0.0, spec: Sublayer = SHIFT_MERGE) -> None:
        super().__init__()
        self.spec = spec
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, dim) if self.spec.extra_proj else None
        self.proj_drop = nn.Dropout(proj_drop)

    @staticmethod
    def merge(v: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Eq. 17-20 on grid values ``(B, m*t*h*w, D)`` (``D`` divisible by ``m``)."""
        if v.shape[-1] % grid.m:
            raise ValueError(f"shift-merge: width {v.shape[-1]} is not divisible by {grid.m} modalities")
        portions = rearrange(v, "b (m n) (s c) -> b m n s c", m=grid.m, s=grid.m)
        return rearrange(portions, "b m n s c -> b (s n) (m c)") + v

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        grid.check(x)
        P = grid.prefix
        out = self.proj_drop(self.proj(self.merge(self.v(x[:, P:]), grid)))
        if self.fc is not None:
            out = self.fc(out)
        return torch.cat([torch.zeros_like(x[:, :P]), out], dim=1)


def build_sublayer(spec: Sublayer, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                   proj_drop: float = 0.0) -> nn.Module:
    """The module a :class:`Sublayer` spec describes."""
    if spec.mixer == "shift_merge":
        return ShiftMerge(dim, qkv_bias, proj_drop, spec=spec)
    return AxisAttention(dim, num_heads, spec, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
