"""Transformer MLP: Linear -> GELU -> Linear (ViT; ViViT Eq. 3)."""
from __future__ import annotations

import torch
from torch import nn

from .linear import apply_linear

ACTIVATIONS = ("gelu", "gelu_tanh")  # gelu_tanh: Hugging Face ViViT's "gelu_fast"


class Mlp(nn.Module):
    """Two linear projections separated by a GELU (fused into the first at CPU inference,
    :func:`~videoformer.layers.linear.linear`)."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", drop: float = 0.0, out_dim: int | None = None):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; choose from {sorted(ACTIVATIONS)}")
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act
        self.fc2 = nn.Linear(hidden, out_dim or dim)
        self.drop = nn.Dropout(drop)

    def extra_repr(self) -> str:
        return f"act={self.act}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(apply_linear(self.fc2, self.drop(apply_linear(self.fc1, x, self.act))))
