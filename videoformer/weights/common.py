"""What every weight converter shares: safe file reading and strict key / shape checking.

``read_file(path)`` is the library's one reader of weight and checkpoint files: ``.safetensors``, ``.npz``
(``allow_pickle=False``) or a torch pickle loaded with ``weights_only=True`` -- never arbitrary objects, so a
crafted file cannot run code. ``read_state_dict(path)`` is ``read_file`` that insists on names -> tensors. ``check_state_dict(state_dict, expected, source)`` raises :class:`CheckpointMismatchError` listing
every missing, unexpected and wrongly shaped key at once. ``load_checked(model, state_dict, source)`` checks
against the model's own state dict, then loads strictly.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

StateDict = dict[str, torch.Tensor]
Shape = Sequence[int]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose architecture is not supported; the message names the file."""


class CheckpointMismatchError(CheckpointError):
    """State-dict keys or shapes that do not fit the target; lists all of them."""

    def __init__(
        self,
        source: str,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        misshaped: Mapping[str, tuple[Shape, Shape]] | None = None,
    ) -> None:
        self.source, self.missing, self.unexpected = source, sorted(missing), sorted(unexpected)
        self.misshaped = dict(sorted((misshaped or {}).items()))
        lines = [f"checkpoint {source} does not match the model:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        for key, (want, got) in self.misshaped.items():
            lines.append(f"  {key}: expected shape {tuple(want)}, got {tuple(got)}")
        super().__init__("\n".join(lines))


def read_file(path: str | Path) -> Any:
    """The contents of a weight or checkpoint file, read without executing anything: ``.safetensors`` and
    ``.npz`` (arrays only) by suffix, anything else as a torch file with ``weights_only=True`` (tensors, numbers,
    strings, lists, tuples and dicts only; any other pickled object is refused, never constructed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(path, device="cpu")
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(z[k]) for k in z.files}
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"refusing to read {path}: it holds pickled objects other than tensors and plain "
                              f"data, which could run code ({str(err).splitlines()[0] if str(err) else err})") from err
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err


def read_state_dict(path: str | Path) -> StateDict:
    """Tensors of a ``.safetensors`` / ``.npz`` file or of a torch file (:func:`read_file`); a top-level mapping
    of names to tensors is required."""
    state = read_file(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a mapping of names to tensors")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {path}: entries {bad[:5]} are not tensors (a training checkpoint? "
                              "pass its state dict)")
    return dict(state)


def check_state_dict(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, Shape], source: str) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state_dict`` has exactly the keys and shapes of
    ``expected``."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = {
        k: (tuple(expected[k]), tuple(v.shape))
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k])
    }
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(source, missing, unexpected, misshaped)


def load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Check ``state_dict`` against ``model``'s own keys and shapes, then load it strictly."""
    check_state_dict(state_dict, {k: v.shape for k, v in model.state_dict().items()}, source)
    model.load_state_dict(state_dict, strict=True)
    return model
