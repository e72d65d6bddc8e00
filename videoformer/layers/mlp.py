"""Transformer MLP: Linear -> GELU -> Linear (ViT; ViViT Eq. 3)."""
from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # Hugging Face ViViT's "gelu_fast"
}


class Mlp(nn.Module):
    """Two linear projections separated by a GELU."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", drop: float = 0.0, out_dim: int | None = None):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; choose from {sorted(ACTIVATIONS)}")
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[act]()
        self.fc2 = nn.Linear(hidden, out_dim or dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
