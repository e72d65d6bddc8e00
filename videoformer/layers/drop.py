"""Stochastic depth (DropPath) with the linearly increasing rate of ViViT Eq. 10."""
from __future__ import annotations

import torch
from torch import nn


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """ViViT Eq. 10: p_l = l / L * p_drop for layers l = 1..L (so the last layer drops with ``rate``)."""
    return [rate * (layer + 1) / depth for layer in range(depth)] if depth else []


class DropPath(nn.Module):
    """Drop the whole residual branch per sample with probability ``p`` during training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"
