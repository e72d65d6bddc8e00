"""Training checkpoints: written atomically (temp file, fsync, rename), so a kill at any moment leaves either
the previous or the new file, never a torn one; a failed write (disk full) removes its temp file and raises
:class:`CheckpointWriteError`; temp files of killed runs are removed by the next run (:func:`remove_stale_temp`).
Holds model, optimiser, schedule, RNG and data-order state; a checkpoint whose weights or optimiser state hold
NaN / inf is refused on load (:class:`~videoformer.weights.common.NonFiniteWeightsError`)."""
from __future__ import annotations

import errno
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..weights.common import CheckpointError, check_finite, read_file

CHECKPOINT_DIR = "checkpoints"


def checkpoint_path(run_dir: str | os.PathLike, which: str = "last") -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"{which}.pt"


class CheckpointWriteError(OSError):
    """A run file could not be written (disk full, no permission); the previous file, if any, is untouched and
    no temp file is left behind. The message names the file."""


TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")  # .<name>.<pid>.tmp, as atomic_write names its temp files


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temp file next to ``path``, fsync it, then rename it over ``path``; on any
    failure the temp file is removed and an ``OSError`` becomes a :class:`CheckpointWriteError`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, CheckpointWriteError):
            reason = os.strerror(err.errno) if err.errno else str(err)
            hint = " (disk full: free space or choose another output_dir)" if err.errno == errno.ENOSPC else ""
            failure = CheckpointWriteError(f"cannot write {path}: {reason}{hint}; the previous {path.name}, if "
                                           "any, is unchanged")
            failure.errno = err.errno
            raise failure from err
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temp(*folders: Path) -> list[Path]:
    """Remove the temp files :func:`atomic_write` left in ``folders`` when its process was killed (those whose
    process id is no longer running; a live writer's file is left alone); returns the removed paths."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = TEMP.match(p.name)
            if m and p.is_file() and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


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
