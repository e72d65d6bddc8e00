"""Optional run outputs beside ``metrics.jsonl``: TensorBoard scalars and PNG plots (training curves, confusion
matrix). Each is written only when its package (tensorboard, matplotlib) imports; training never needs them."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

from ..fileio import atomic_write


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


class TensorBoard:
    """Scalars of each epoch record under ``<run>/tensorboard`` (a no-op without the tensorboard package)."""

    def __init__(self, run_dir: Path) -> None:
        self.writer = None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)):
                self.writer.add_scalar(key.replace("_", "/", 1), value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def plot_curves(history: Sequence[dict[str, Any]], path: Path) -> bool:
    """Training loss and accuracies per epoch; returns whether the PNG was written."""
    if not has_matplotlib() or not history:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
    loss_ax.plot(epochs, [r["train_loss"] for r in history], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="train loss", title="loss")
    acc_ax.plot(epochs, [r["train_acc"] for r in history], marker="o", label="train top-1")
    val = [(r["epoch"], r["val_top1"]) for r in history if "val_top1" in r]
    if val:
        acc_ax.plot(*zip(*val), marker="s", label="val top-1")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1), title="accuracy")
    acc_ax.legend()
    _save(fig, path)
    plt.close(fig)
    return True


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str = "") -> bool:
    """Row-normalised confusion matrix (rows: true class, columns: predicted); returns whether it was written."""
    if not has_matplotlib():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(confusion, dtype=float)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(classes)
    side = min(2 + 0.4 * n, 20)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                if m[i, j] >= 0.005:
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion (row-normalised)")
    _save(fig, path)
    plt.close(fig)
    return True
