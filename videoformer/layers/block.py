"""Pre-norm transformer block that takes its attention sublayers as arguments (ViViT Eq. 2-6)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .drop import DropPath
from .grid import Grid
from .mlp import Mlp


class Block(nn.Module):
    """``x <- x + DropPath(attn_i(LN_i(x), grid))`` for each attention sublayer, then ``x <- x + MLP(LN(x))``.

    One sublayer is the ViT block (Eq. 2-3); two (space then time, or time then space) is ViViT model 3
    (Eq. 4-6) / TimeSformer divided attention; three is TimeSformer axial attention.
    """

    def __init__(
        self,
        dim: int,
        attns: Sequence[nn.Module],
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        drop: float = 0.0,
        act: str = "gelu",
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=norm_eps) for _ in attns)
        self.attns = nn.ModuleList(attns)
        self.norm_mlp = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act, drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        for norm, attn in zip(self.norms, self.attns):
            x = x + self.drop_path(attn(norm(x), grid))
        return x + self.drop_path(self.mlp(self.norm_mlp(x)))
