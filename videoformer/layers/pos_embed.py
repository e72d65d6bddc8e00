"""Learned positional embeddings over the token grid (ViViT Eq. 1), joint or separable space + time,
resampled when a clip's T, H or W differ from the ones the model was built for."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from .grid import Grid

_MODES = {1: "linear", 2: "bicubic", 3: "trilinear"}


def resample(pos: torch.Tensor, old: tuple[int, ...], new: tuple[int, ...]) -> torch.Tensor:
    """Resample grid embeddings ``(1, prod(old), D)`` to ``(1, prod(new), D)`` (linear / bicubic / trilinear).

    Axes of size 1 on both sides are dropped first, so a (1, 14, 14) grid resamples bicubically in space.
    """
    if tuple(old) == tuple(new):
        return pos
    keep = [i for i, (a, b) in enumerate(zip(old, new)) if not (a == 1 and b == 1)]
    old_k, new_k = [old[i] for i in keep], [new[i] for i in keep]
    x = pos.reshape(1, *old_k, pos.shape[-1]).movedim(-1, 1)  # (1, D, *old)
    x = F.interpolate(x.float(), size=new_k, mode=_MODES[len(keep)], align_corners=False).to(pos.dtype)
    return x.movedim(1, -1).reshape(1, -1, pos.shape[-1])


class JointPosEmbed(nn.Module):
    """One embedding per token: ``(1, P + T*H*W, D)`` (ViViT models 1, 3, 4; TimeSformer joint in MViT's ViT-B)."""

    def __init__(self, dim: int, grid: Grid, std: float = 0.02) -> None:
        super().__init__()
        self.grid = grid
        self.pos = nn.Parameter(torch.zeros(1, grid.prefix + grid.numel, dim))
        nn.init.trunc_normal_(self.pos, std=std)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        P, shape = self.grid.prefix, (self.grid.t, self.grid.h, self.grid.w)
        body = resample(self.pos[:, P:], shape, (grid.t, grid.h, grid.w))
        return x + torch.cat([self.pos[:, :P], body], dim=1)


class SeparablePosEmbed(nn.Module):
    """Space embedding ``(1, P + H*W, D)`` shared by all frames plus time embedding ``(1, T, D)`` shared by
    all positions (TimeSformer, MViT default). Prefix tokens get only their space embedding."""

    def __init__(self, dim: int, grid: Grid, std: float = 0.02, time: bool = True, time_std: float = 0.0) -> None:
        super().__init__()
        self.grid = grid
        self.space = nn.Parameter(torch.zeros(1, grid.prefix + grid.h * grid.w, dim))
        nn.init.trunc_normal_(self.space, std=std)
        self.time = nn.Parameter(torch.zeros(1, grid.t, dim)) if time else None
        if self.time is not None and time_std > 0:  # zeros by default, as the official TimeSformer
            nn.init.trunc_normal_(self.time, std=time_std)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        P = self.grid.prefix
        space = resample(self.space[:, P:], (self.grid.h, self.grid.w), (grid.h, grid.w))
        body = repeat(space, "1 (h w) d -> 1 t (h w) d", t=grid.t, h=grid.h)
        if self.time is not None:
            time = resample(self.time, (self.grid.t,), (grid.t,))
            body = body + rearrange(time, "1 t d -> 1 t 1 d")
        body = rearrange(body, "1 t n d -> 1 (t n) d")
        return x + torch.cat([self.space[:, :P], body], dim=1)
