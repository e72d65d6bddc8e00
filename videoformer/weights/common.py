"""What every weight converter shares: safe file reading and strict key / shape checking.

``read_file(path)`` is the library's one reader of weight and checkpoint files: ``.safetensors``, ``.npz``
(``allow_pickle=False``), flax msgpack (Scenic; decoded with ``msgpack``, no JAX) or a torch pickle loaded with
``weights_only=True`` -- never arbitrary objects, so a
crafted file cannot run code; the format is recognised from the contents, not the suffix (``.pyth``, ``.pth``,
``checkpoint_1000``). ``read_state_dict(path)`` is ``read_file`` that insists on names -> tensors.
``Converted`` and ``register_format`` are the contract of the official-checkpoint converters;
``detect_format`` picks the one registered :class:`Format` that recognises a file's contents (a directory is
passed to the formats as a :class:`Directory`). ``Rule`` / ``convert_by_rules`` build our state dict from a
foreign one, checking that every source key exists with the implied shape and is used exactly once.
``check_state_dict(state_dict, expected, source)`` raises :class:`CheckpointMismatchError` listing
every missing, unexpected and wrongly shaped key at once; ``check_finite(tensors, source)`` raises
:class:`NonFiniteWeightsError` naming the first tensors holding NaN / inf. ``load_checked(model, state_dict,
source)`` does both against the model's own state dict, then loads strictly.
"""
from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import msgpack
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..data.preprocessing import Preprocessing

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


class NonFiniteWeightsError(CheckpointError):
    """Weights holding NaN or inf: the file is corrupted (or was saved from a diverged run); never loaded."""

    def __init__(self, source: str, names: Sequence[str], counts: Sequence[str], advice: str = "refusing to load it"):
        self.source, self.names, self.counts = source, list(names), list(counts)
        more = f" and {len(names) - len(counts)} more" if len(names) > len(counts) else ""
        super().__init__(f"{source} is corrupted: {len(names)} tensor(s) hold NaN or inf values "
                         f"({', '.join(counts)}{more}); {advice}")


def _tensors(obj: Any, prefix: str = ""):
    """``(name, tensor)`` of every tensor in nested dicts / lists / tuples (a state dict, an optimiser state)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}" if prefix else str(i))


def nonfinite(obj: Any) -> list[str]:
    """Names of the floating-point tensors in ``obj`` (a state dict, or nested dicts / lists of tensors such as
    an optimiser state) that hold NaN or inf."""
    return [name for name, t in _tensors(obj)
            if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]


def check_finite(obj: Any, source: str, show: int = 5) -> None:
    """Raise :class:`NonFiniteWeightsError` naming ``source`` and its first ``show`` non-finite tensors (with
    how many of their values are NaN / inf) unless every floating-point tensor in ``obj`` is finite."""
    names = nonfinite(obj)
    if names:
        found = dict(_tensors(obj))
        counts = [f"{n}: {int((~torch.isfinite(found[n])).sum())} of {found[n].numel()} values" for n in names[:show]]
        raise NonFiniteWeightsError(source, names, counts)


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
    """Check ``state_dict`` against ``model``'s own keys and shapes and refuse non-finite weights, then load it
    strictly."""
    check_state_dict(state_dict, {k: v.shape for k, v in model.state_dict().items()}, source)
    check_finite(state_dict, source)
    model.load_state_dict(state_dict, strict=True)
    return model


@dataclass
class Converted:
    """An official checkpoint translated to this library: the registered architecture, the config fields that
    differ from its defaults, the weights in this library's key layout, and the input convention.

    ``config`` describes the checkpoint's *own* architecture (``state_dict`` loads strictly into
    ``create_model(model, **config)``); a converter takes from the caller's ``overrides`` only what the file does
    not record (e.g. ``num_frames`` of a model without a time embedding). ``load_pretrained`` applies the
    remaining overrides (other frames / size / class count) by transferring the weights into a model built with
    them: positional embeddings resized by the model's rule, a fresh head when the class count differs."""

    model: str  # registry name, e.g. "timesformer_b16_divided"
    config: dict[str, Any]  # create_model overrides: num_classes, num_frames, img_size, readout, ...
    state_dict: StateDict
    source: str  # the file, for messages
    preprocessing: Preprocessing | None = None  # None: the registered model's default
    classes: list[str] | None = None


@dataclass(frozen=True)
class Format:
    """One checkpoint layout: ``detect(obj)`` says whether a file's contents (as :func:`read_file` returns them,
    or a :class:`Directory`) are in this layout; ``convert(obj, source, model, overrides)`` translates them
    (``model``: a registry name the caller insists on, or None; ``overrides``: config fields the caller sets)."""

    name: str
    detect: Callable[[Any], bool]
    convert: Callable[[Any, str, str | None, dict[str, Any]], Converted]
    video: bool = True  # False: an image checkpoint (for init_from_image, not load_pretrained)


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Make a layout known to ``load_pretrained``; each converter module registers its own at import."""
    FORMATS[fmt.name] = fmt
    return fmt


@dataclass(frozen=True)
class Directory:
    """A checkpoint directory as the formats see it: its path and its parsed ``config.json`` (None if absent)."""

    path: Path
    config: dict[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def open(cls, path: Path) -> "Directory":
        config_path = path / "config.json"
        if not config_path.is_file():
            return cls(path)
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{config_path}: invalid JSON: {err}") from err
        return cls(path, config if isinstance(config, dict) else None)


def describe(obj: Any) -> str:
    """What a file holds, for error messages: its top-level keys (a few tensor keys of a bare state dict)."""
    if isinstance(obj, Directory):
        names = sorted(p.name for p in obj.path.iterdir())[:12]
        return f"a directory with {', '.join(names) or 'nothing'}"
    if isinstance(obj, Mapping):
        keys = list(obj)
        shown = ", ".join(map(str, keys[:8])) + (f", ... ({len(keys)} keys)" if len(keys) > 8 else "")
        return f"top-level keys: {shown or 'none'}"
    return f"a {type(obj).__name__}"


def detect_format(obj: Any, source: str, video: bool | None = True) -> Format:
    """The one registered :class:`Format` whose ``detect`` accepts ``obj`` (``video``: only video formats,
    only image formats, or ``None`` for all); :class:`CheckpointError` naming the known formats and what the
    file holds when none does, or the candidates when several do."""
    formats = [f for f in FORMATS.values() if video is None or f.video == video]
    hits = [f for f in formats if f.detect(obj)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise CheckpointError(f"{source}: ambiguous checkpoint, it matches formats {', '.join(f.name for f in hits)}")
    raise CheckpointError(f"{source}: not a checkpoint layout this library knows ({describe(obj)}); known formats: "
                          f"{', '.join(f.name for f in formats)}")


def tensor_dict(obj: Any, wrappers: Sequence[str] = ()) -> Mapping[str, Any] | None:
    """The state dict inside a file's contents: ``obj`` itself, or ``obj[w]`` for the first wrapper key ``w``
    present (``model_state``, ``state_dict``, ...); None when there is no mapping of names to tensors."""
    if not isinstance(obj, Mapping):
        return None
    for key in wrappers:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return None
    return obj


@dataclass(frozen=True)
class Rule:
    """How one of our tensors is made from source tensors: ``copy``, ``qkv`` (concatenate the q, k, v rows) or
    ``frame_conv`` (a ``Conv2d`` filter gets a temporal axis of size 1)."""

    sources: tuple[str, ...]
    op: str = "copy"

    def source_shapes(self, target: tuple[int, ...]) -> list[tuple[int, ...]]:
        if self.op == "qkv":
            return [(target[0] // 3, *target[1:])] * 3
        if self.op == "frame_conv":
            return [target[:2] + target[3:]]
        return [target]

    def apply(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        if self.op == "qkv":
            return torch.cat(tensors, dim=0)
        if self.op == "frame_conv":
            return tensors[0].unsqueeze(2)
        return tensors[0]


def vit_rules(fixed: Mapping[str, Rule], norm: str, head: str, layer: str, block: Mapping[str, str],
              qkv: Sequence[str] | None = None) -> Callable[[str], Rule | None]:
    """``rule_of`` for a ViT-like source layout: ``fixed`` targets as given; our ``norm.*`` / ``head.*`` from
    ``{norm}.*`` / ``{head}.*``; our ``blocks.i.<m>.*`` from ``{layer.format(i)}.{block[m]}.*``; with ``qkv``
    (three module names inside a layer), our fused ``attns.0.qkv`` from the separate q, k, v projections."""

    def rule_of(target: str) -> Rule | None:
        if target in fixed:
            return fixed[target]
        module, _, leaf = target.rpartition(".")
        if module in ("norm", "head"):
            return Rule((f"{norm if module == 'norm' else head}.{leaf}",))
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
        if not m:
            return None
        prefix = layer.format(m.group(1))
        if qkv is not None and m.group(2) == "attns.0.qkv":
            return Rule(tuple(f"{prefix}.{name}.{leaf}" for name in qkv), "qkv")
        return Rule((f"{prefix}.{block[m.group(2)]}.{leaf}",)) if m.group(2) in block else None

    return rule_of


def convert_by_rules(expected: Mapping[str, Shape], rule_of: Callable[[str], Rule | None],
                     state_dict: Mapping[str, Any], source: str, origin: str = "the checkpoint") -> StateDict:
    """Our state dict for the keys and shapes ``expected``, each target built by ``rule_of(target)``; every
    source key must exist with the shape the target implies and be used once, else
    :class:`CheckpointMismatchError` lists all that did not fit."""
    rules = {}
    for target in expected:
        rule = rule_of(target)
        if rule is None:
            raise CheckpointError(f"{source}: no counterpart in {origin} for parameter {target!r}")
        rules[target] = rule
    missing, misshaped, out = [], {}, {}
    for target, rule in rules.items():
        absent = [k for k in rule.sources if k not in state_dict]
        if absent:
            missing += absent
            continue
        tensors = [state_dict[k] for k in rule.sources]
        wrong = {k: (want, tuple(t.shape)) for k, t, want in
                 zip(rule.sources, tensors, rule.source_shapes(tuple(expected[target]))) if tuple(t.shape) != want}
        if wrong:
            misshaped.update(wrong)
            continue
        out[target] = rule.apply(tensors)
    used = {k for rule in rules.values() for k in rule.sources}
    unexpected = [k for k in state_dict if k not in used]
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(source, missing, unexpected, misshaped)
    return out


def model_shapes(name: str, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of ``create_model(name, **config)``, built on the meta device (no memory, no init)."""
    from ..models import create_model

    with torch.device("meta"):
        model = create_model(name, **config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def heads_of(dim: int, overrides: Mapping[str, Any], source: str) -> int:
    """Attention heads of a checkpoint whose file does not record them: ``overrides["num_heads"]``, else the
    ViT convention of 64-wide heads (ViT-B: 12, ViT-L: 16)."""
    heads = overrides.get("num_heads", dim // 64 if dim % 64 == 0 else None)
    if not heads:
        raise CheckpointError(f"{source}: width {dim} is not a multiple of 64; pass num_heads=")
    return int(heads)
