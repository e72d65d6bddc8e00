"""Learned positional embeddings over the token grid (ViViT Eq. 1), joint or separable space + time,
resampled when a clip's T, H or W differ from the ones the model was built for.

Resampling rule (``mode``): ``"interpolate"`` (default: linear in time, bicubic in space, trilinear for a
joint 3-D grid) or ``"nearest"`` (the official TimeSformer code: nearest neighbour for the 2-D space grid and
the 1-D time axis). Each checkpoint runs with its authors' rule at other input sizes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from .grid import Grid

_MODES = {1: "linear", 2: "bicubic", 3: "trilinear"}
RESIZE_MODES = ("interpolate", "nearest")


def check_resize_mode(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is one of :data:`RESIZE_MODES`."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown positional-embedding resize mode {mode!r}; choose from {', '.join(RESIZE_MODES)}")


def resample(pos: torch.Tensor, old: tuple[int, ...], new: tuple[int, ...], mode: str = "interpolate") -> torch.Tensor:
    """Resample grid embeddings ``(1, prod(old), D)`` to ``(1, prod(new), D)``: linear / bicubic / trilinear
    (``mode="interpolate"``) or nearest neighbour (``mode="nearest"``, as ``F.interpolate(mode="nearest")``).

    Axes of size 1 on both sides are dropped first, so a (1, 14, 14) grid resamples in 2-D space.
    """
    check_resize_mode(mode)
    if tuple(old) == tuple(new):
        return pos
    keep = [i for i, (a, b) in enumerate(zip(old, new)) if not (a == 1 and b == 1)]
    old_k, new_k = [old[i] for i in keep], [new[i] for i in keep]
    x = pos.reshape(1, *old_k, pos.shape[-1]).movedim(-1, 1)  # (1, D, *old)
    if mode == "nearest":
        x = F.interpolate(x.float(), size=new_k, mode="nearest").to(pos.dtype)
    else:
        x = F.interpolate(x.float(), size=new_k, mode=_MODES[len(keep)], align_corners=False).to(pos.dtype)
    return x.movedim(1, -1).reshape(1, -1, pos.shape[-1])


class JointPosEmbed(nn.Module):
    """One embedding per token: ``(1, P + T*H*W, D)`` (ViViT models 1, 3, 4; TimeSformer joint in MViT's ViT-B)."""

    def __init__(self, dim: int, grid: Grid, std: float = 0.02, mode: str = "interpolate") -> None:
        super().__init__()
        check_resize_mode(mode)
        self.grid, self.mode = grid, mode
        self.pos = nn.Parameter(torch.zeros(1, grid.prefix + grid.numel, dim))
        nn.init.trunc_normal_(self.pos, std=std)

    def resized(self, grid: Grid) -> dict[str, torch.Tensor]:
        """This module's parameters for a model built on ``grid`` (what ``forward`` adds at that grid)."""
        P, shape = self.grid.prefix, (self.grid.t, self.grid.h, self.grid.w)
        body = resample(self.pos[:, P:], shape, (grid.t, grid.h, grid.w), self.mode)
        return {"pos": torch.cat([self.pos[:, :P], body], dim=1)}

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        return x + self.resized(grid)["pos"]


class SeparablePosEmbed(nn.Module):
    """Space embedding ``(1, P + H*W, D)`` shared by all frames plus time embedding ``(1, T, D)`` shared by
    all positions (TimeSformer, MViT default). Prefix tokens get only their space embedding."""

    def __init__(self, dim: int, grid: Grid, std: float = 0.02, time: bool = True, time_std: float = 0.0,
                 mode: str = "interpolate") -> None:
        super().__init__()
        check_resize_mode(mode)
        self.grid, self.mode = grid, mode
        self.space = nn.Parameter(torch.zeros(1, grid.prefix + grid.h * grid.w, dim))
        nn.init.trunc_normal_(self.space, std=std)
        self.time = nn.Parameter(torch.zeros(1, grid.t, dim)) if time else None
        if self.time is not None and time_std > 0:  # zeros by default, as the official TimeSformer
            nn.init.trunc_normal_(self.time, std=time_std)

    def resized(self, grid: Grid) -> dict[str, torch.Tensor]:
        """This module's parameters for a model built on ``grid``."""
        P = self.grid.prefix
        space = resample(self.space[:, P:], (self.grid.h, self.grid.w), (grid.h, grid.w), self.mode)
        out = {"space": torch.cat([self.space[:, :P], space], dim=1)}
        if self.time is not None:
            out["time"] = resample(self.time, (self.grid.t,), (grid.t,), self.mode)
        return out

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        params = self.resized(grid)
        P = self.grid.prefix
        body = repeat(params["space"][:, P:], "1 (h w) d -> 1 t (h w) d", t=grid.t, h=grid.h)
        if "time" in params:
            body = body + rearrange(params["time"], "1 t d -> 1 t 1 d")
        body = rearrange(body, "1 t n d -> 1 (t n) d")
        return x + torch.cat([params["space"][:, :P], body], dim=1)
