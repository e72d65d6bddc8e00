"""Training checkpoints: written atomically (temp file, fsync, rename), so a kill at any moment leaves either
the previous or the new file, never a torn one; a failed write (disk full) removes its temp file and raises
:class:`~videoformer.fileio.WriteError`; temp files of killed runs are removed by the next run
(:func:`~videoformer.fileio.remove_stale_temp`).
Holds model, optimiser, schedule, RNG and data-order state; a checkpoint whose weights or optimiser state hold
NaN / inf is refused on load (:class:`~videoformer.weights.common.NonFiniteWeightsError`)."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import atomic_write
from ..weights.common import CheckpointError, check_finite, read_file

CHECKPOINT_DIR = "checkpoints"


def checkpoint_path(run_dir: str | os.PathLike, which: str = "last") -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"{which}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint written by :func:`save_checkpoint` (CPU tensors), read with the library's one
    pickle-free reader (:func:`~videoformer.weights.common.read_file`)."""
    path = Path(path)
    state = read_file(path)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a videoformer training checkpoint (no 'model' / 'config' entries)")
    check_finite({"model": state["model"], "optimizer": state.get("optimizer", {})}, str(path))
    return state


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states as tensors and plain tuples, so a checkpoint holding
    them loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
