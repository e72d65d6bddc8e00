"""Frame-shuffle evaluation (MViT Table 9): permute the frames of every clip at test time, to check whether a
model uses temporal order at all (MViT-B drops 7.1 points, ViT-B 0.1)."""
from __future__ import annotations

import torch

from ..data.batch import shuffle_time


def shuffle_frames(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, C, T, H, W)`` clips -> the same clips, each with its own random permutation of the ``T`` axis."""
    if x.ndim != 5:
        raise ValueError(f"expected clips of shape (B, C, T, H, W), got {tuple(x.shape)}")
    B, T = x.shape[0], x.shape[2]
    order = torch.rand(B, T, generator=generator, device=generator.device if generator else "cpu")
    return shuffle_time(x, order.argsort(dim=1).to(x.device), 2)  # one permutation per clip
