"""Learning-rate schedules, evaluated per optimiser step: cosine with linear warmup (ViViT §4.1), step decay
(MSCA), and decay on a validation plateau (MM-ViT). The state is a few numbers, saved in checkpoints."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch.optim import Optimizer


@dataclass
class LRSchedule:
    """``factor(step)`` multiplies the base learning rate; ``observe(metric)`` feeds the plateau rule."""

    kind: str  # cosine | step | plateau | constant
    steps_per_epoch: int
    epochs: int
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    patience: int = 2
    best: float = -math.inf
    bad_epochs: int = 0
    decays: int = 0

    def factor(self, step: int) -> float:
        warmup = self.warmup_epochs * self.steps_per_epoch
        if step < warmup:
            return (step + 1) / warmup
        if self.kind == "cosine":
            total = max(self.epochs * self.steps_per_epoch - warmup, 1)
            progress = min((step - warmup) / total, 1.0)
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "step":
            epoch = step // self.steps_per_epoch
            return self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.kind == "plateau":
            return self.gamma ** self.decays
        return 1.0

    def observe(self, metric: float) -> None:
        """End-of-epoch validation metric (higher is better): decay after ``patience`` epochs without gain."""
        if metric > self.best:
            self.best, self.bad_epochs = metric, 0
            return
        self.bad_epochs += 1
        if self.kind == "plateau" and self.bad_epochs > self.patience:
            self.decays, self.bad_epochs = self.decays + 1, 0

    def apply(self, optimizer: Optimizer, step: int) -> float:
        """Set every group's lr to its ``base_lr`` times the factor; returns the first group's lr."""
        f = self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * f
        return optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "decays": self.decays}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best, self.bad_epochs, self.decays = state["best"], int(state["bad_epochs"]), int(state["decays"])
