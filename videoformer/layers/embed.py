"""Video tokenisers (ViViT §3.2): uniform frame sampling (1×P×P patches) and tubelet embedding (t×P×P)."""
from __future__ import annotations

import torch
from torch import nn

from .grid import Grid


def check_video(x: torch.Tensor, in_chans: int) -> None:
    """Raise ``ValueError`` unless ``x`` is a ``(B, C, T, H, W)`` clip with ``in_chans`` channels."""
    if x.ndim != 5 or x.shape[1] != in_chans:
        raise ValueError(f"expected a clip of shape (B, {in_chans}, T, H, W), got {tuple(x.shape)}")


class TubeletEmbed(nn.Module):
    """Non-overlapping ``t×h×w`` tubelets linearly projected to ``d`` (a strided Conv3d, ViViT Fig. 3).

    ``tubelet=(1, P, P)`` is uniform frame sampling (ViViT Fig. 2): every frame is embedded as ViT does.
    """

    def __init__(self, in_chans: int, dim: int, tubelet: tuple[int, int, int]) -> None:
        super().__init__()
        self.in_chans, self.tubelet = in_chans, tuple(tubelet)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=self.tubelet, stride=self.tubelet)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        """``(B, C, T, H, W)`` -> tokens ``(B, nt*nh*nw, d)`` in ``(t h w)`` order, and their grid."""
        check_video(x, self.in_chans)
        sizes = x.shape[2:]
        if any(n % k for n, k in zip(sizes, self.tubelet)):
            raise ValueError(
                f"clip T×H×W = {'×'.join(map(str, sizes))} is not divisible by the tubelet "
                f"{'×'.join(map(str, self.tubelet))}"
            )
        if self.tubelet[0] == 1:  # per-frame 2D patches: a Conv2d over B*T frames is the faster kernel
            B, T = x.shape[0], x.shape[2]
            frames = x.transpose(1, 2).flatten(0, 1)
            y = nn.functional.conv2d(frames, self.proj.weight.squeeze(2), self.proj.bias, stride=self.tubelet[1:])
            grid = Grid(t=T, h=y.shape[-2], w=y.shape[-1])
            return y.flatten(2).transpose(1, 2).reshape(B, -1, y.shape[1]), grid
        y = self.proj(x)  # (B, d, nt, nh, nw)
        grid = Grid(t=y.shape[2], h=y.shape[3], w=y.shape[4])
        return y.flatten(2).transpose(1, 2), grid
