"""Pre-norm transformer block built from :class:`~videoformer.layers.spec.Sublayer` specs (ViViT Eq. 2-6)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .attention import build_sublayer
from .drop import DropPath
from .grid import Grid
from .mlp import Mlp
from .spec import Sublayer

PreHook = Callable[[torch.Tensor, Grid], torch.Tensor]
"""``(tokens, grid) -> tokens`` applied before every sublayer and before the MLP (TokenShift Eq. 4, 6)."""


class Block(nn.Module):
    """``x <- x + DropPath(attn_i(LN_i(x), grid))`` for each sublayer spec, then ``x <- x + MLP(LN(x))``.

    One sublayer is the ViT block (Eq. 2-3); two (space then time, or time then space) is ViViT model 3
    (Eq. 4-6) / TimeSformer divided attention; three is TimeSformer axial attention. ``pre``: an optional
    parameter-free hook on the residual stream before each sublayer and before the MLP (TokenShift).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sublayers: Sequence[Sublayer],
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        qkv_bias: bool = True,
        act: str = "gelu",
        norm_eps: float = 1e-6,
        pre: PreHook | None = None,
    ) -> None:
        super().__init__()
        self.specs = tuple(sublayers)
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=norm_eps) for _ in self.specs)
        self.attns = nn.ModuleList(build_sublayer(s, dim, num_heads, qkv_bias, attn_drop, drop) for s in self.specs)
        self.norm_mlp = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act, drop=drop)
        self.drop_path = DropPath(drop_path)
        self.pre = pre

    def extra_repr(self) -> str:
        return "" if self.pre is None else f"pre={self.pre}"

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        for norm, attn in zip(self.norms, self.attns):
            if self.pre is not None:
                x = self.pre(x, grid)
            x = x + self.drop_path(attn(norm(x), grid))
        if self.pre is not None:
            x = self.pre(x, grid)
        return x + self.drop_path(self.mlp(self.norm_mlp(x)))
