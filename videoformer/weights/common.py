"""What every weight converter shares: safe file reading and strict key / shape checking.

``read_file(path)`` is the library's one reader of weight and checkpoint files: ``.safetensors``, ``.npz``
(``allow_pickle=False``), flax msgpack (Scenic; decoded with ``msgpack``, no JAX) or a torch pickle loaded with
``weights_only=True`` -- never arbitrary objects, so a
crafted file cannot run code; the format is recognised from the contents, not the suffix (``.pyth``, ``.pth``,
``checkpoint_1000``). ``read_state_dict(path)`` is ``read_file`` that insists on names -> tensors.
``Converted`` and ``register_format`` are the contract of the official-checkpoint converters.
``check_state_dict(state_dict, expected, source)`` raises :class:`CheckpointMismatchError` listing
every missing, unexpected and wrongly shaped key at once. ``load_checked(model, state_dict, source)`` checks
against the model's own state dict, then loads strictly.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import msgpack
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..data.preprocessing import Preprocessing
from ..models import create_model

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


def sniff(path: Path) -> str:
    """The container of a file from its first bytes: ``safetensors``, ``npz``, ``torch`` (zip or legacy
    pickle), ``msgpack`` (flax / Scenic) or ``unknown``."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "unknown"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        return "torch"
    if head[:1] == b"\x80":  # pickle protocol 2+: torch's legacy format
        return "torch"
    if head[:1] and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):  # msgpack map
        return "msgpack"
    return "unknown"


# flax.serialization's msgpack extension codes: an ndarray packed as (shape, dtype name, C-order bytes), a Python
# complex as (real, imag), a NumPy scalar as a 0-d ndarray. Arrays over 1 GiB are split into flat chunks under
# {"__msgpack_chunked_array__": True, "shape": {"0": .., ..}, "chunks": {"0": .., ..}}.
_EXT_NDARRAY, _EXT_COMPLEX, _EXT_NPSCALAR = 1, 2, 3
_CHUNKED = "__msgpack_chunked_array__"


def _msgpack_array(data: bytes) -> torch.Tensor:
    """One flax ndarray extension payload -> a tensor (``bfloat16`` included, which NumPy lacks)."""
    shape, dtype, buffer = msgpack.unpackb(data, raw=True)
    name = dtype.decode() if isinstance(dtype, bytes) else str(dtype)
    try:
        np_dtype = np.dtype("uint16" if name == "bfloat16" else name)
    except TypeError as err:
        raise CheckpointError(f"flax array of unsupported dtype {name!r}") from err
    count = int(np.prod(shape, dtype=np.int64))
    if count * np_dtype.itemsize != len(buffer):
        raise CheckpointError(f"flax array of shape {tuple(shape)} and dtype {name} holds {len(buffer)} bytes, "
                              f"not {count * np_dtype.itemsize}")
    tensor = torch.from_numpy(np.frombuffer(buffer, np_dtype).reshape(shape).copy())
    return tensor.view(torch.bfloat16) if name == "bfloat16" else tensor


def _msgpack_ext(code: int, data: bytes) -> Any:
    if code == _EXT_NDARRAY:
        return _msgpack_array(data)
    if code == _EXT_NPSCALAR:
        return _msgpack_array(data).item()
    if code == _EXT_COMPLEX:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    raise CheckpointError(f"unknown msgpack extension type {code} (flax writes 1: ndarray, 2: complex, 3: scalar)")


def _unchunk(tree: Any) -> Any:
    """Reassemble flax's chunked large arrays, everywhere in the tree."""
    if not isinstance(tree, dict):
        return tree
    if tree.get(_CHUNKED) is True:
        shape = [tree["shape"][str(i)] for i in range(len(tree["shape"]))]
        chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
        return torch.cat([c.reshape(-1) for c in chunks]).reshape(shape)
    return {k: _unchunk(v) for k, v in tree.items()}


def _read_msgpack(path: Path) -> Any:
    """A flax ``msgpack`` checkpoint (``flax.serialization.to_bytes``, what Scenic's ``save_checkpoint`` writes)
    as nested dicts of tensors and plain values, without JAX or flax."""
    try:
        tree = msgpack.unpackb(path.read_bytes(), ext_hook=_msgpack_ext, raw=False, strict_map_key=False)
        return _unchunk(tree)
    except (msgpack.UnpackException, ValueError, TypeError, KeyError) as err:
        if isinstance(err, CheckpointError):
            raise CheckpointError(f"cannot read flax checkpoint {path}: {err}") from err
        raise CheckpointError(f"cannot read flax checkpoint {path}: {type(err).__name__}: {err}") from err


def read_file(path: str | Path) -> Any:
    """The contents of a weight or checkpoint file, read without executing anything: safetensors, npz (arrays
    only), msgpack, or a torch file with ``weights_only=True`` (tensors, numbers, strings, lists, tuples and
    dicts only; any other pickled object is refused, never constructed). The format comes from the contents."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    kind = sniff(path)
    try:
        if kind == "safetensors":
            return load_file(path, device="cpu")
        if kind == "npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(z[k]) for k in z.files}
        if kind == "msgpack":
            return _read_msgpack(path)
        if kind == "unknown":
            raise CheckpointError(f"{path}: not a checkpoint file (known containers: safetensors, torch, npz, "
                                  "flax msgpack)")
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"refusing to read {path}: it holds pickled objects other than tensors and plain "
                              f"data, which could run code ({str(err).splitlines()[0] if str(err) else err})") from err
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        if isinstance(err, CheckpointError):
            raise
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


@dataclass
class Converted:
    """An official checkpoint translated to this library: the registered architecture, the config fields that
    differ from its defaults, the weights in this library's key layout, and the input convention."""

    model: str  # registry name, e.g. "timesformer_b16_divided"
    config: dict[str, Any]  # create_model overrides: num_classes, num_frames, img_size, readout, ...
    state_dict: StateDict
    source: str  # the file, for messages
    preprocessing: Preprocessing | None = None  # None: the registered model's default
    classes: list[str] | None = None


@dataclass(frozen=True)
class Format:
    """One checkpoint layout: ``detect(obj)`` says whether a file's contents (as :func:`read_file` returns them)
    are in this layout; ``convert(obj, source, model, overrides)`` translates them (``model``: a registry name
    the caller insists on, or None; ``overrides``: config fields the caller sets)."""

    name: str
    detect: Callable[[Any], bool]
    convert: Callable[[Any, str, str | None, dict[str, Any]], Converted]


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Make a layout known to ``load_pretrained``; each converter module registers its own at import."""
    FORMATS[fmt.name] = fmt
    return fmt


def build_converted(converted: Converted) -> nn.Module:
    """The registered model of ``converted``, built with its config and its weights loaded strictly, in eval
    mode (what ``load_pretrained`` does for a file of a registered format)."""
    model = create_model(converted.model, **converted.config)
    return load_checked(model, converted.state_dict, converted.source).eval()
