"""Run configuration: YAML files in ``configs/`` mapped onto dataclasses, ``key=value`` dotted overrides.

Every key and every enumerated value is checked while the config is read; every value's range (declared
once, on its field, as ``Annotated[type, Range(...)]``) and the rules that tie fields together are checked by
:func:`validate` before anything is built. A mistake raises :class:`ConfigError` naming the key (and the file)
and saying what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

import yaml

from ..settings import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, Augment, ConfigError, Length, Range


class Device:
    """``train.device``: ``auto`` or a device this machine has (checked in :func:`validate`, after overrides,
    so a run trained on a GPU can be evaluated with ``train.device=cpu``)."""

    def check(self, value: str, where: str) -> None:
        from .distributed import check_device

        check_device(value, where)


@dataclass
class ModelConfig:
    name: str = "vit_tiny_framewise"  # a registered model (`videoformer list`)
    num_frames: Annotated[int | None, AT_LEAST_1] = None  # None: the registered default
    img_size: Annotated[int | None, AT_LEAST_1] = None  # a multiple of the patch size (checked with the model)
    num_classes: Annotated[int | None, AT_LEAST_1] = None  # None: from the dataset's class list
    # Pretrained weights: any video checkpoint load_pretrained reads (official release file, Hugging Face or
    # videoformer directory, run) -- the model takes its architecture and input convention -- or an image ViT
    # (HF / timm / npz) for ViViT §3.4 initialisation.
    pretrained: str | None = None
    drop_path_rate: Annotated[float | None, Range(0, 1, hi_open=True)] = None  # stochastic depth; None: the model's
    freeze: list[str] = field(default_factory=list)  # glob patterns over parameter names, e.g. "blocks.0.*"
    grad_checkpointing: bool = False  # recompute activations in the backward pass (less memory, slower)
    overrides: dict[str, Any] = field(default_factory=dict)  # further fields of the family's config dataclass
    # Input convention (Preprocessing fields: mean, std, resize, ...): empty = the weights' own, else the model
    # family's. Keys set here win over the weights'; train writes the resolved convention back here.
    preprocessing: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSource:
    """Where the videos of a run are and how they are read (the first keys of the ``data`` section)."""

    # annotation format; folder: root/<train>/<class>/<video> and root/<val>/<class>/<video>
    format: Literal["kinetics", "ucf101", "hmdb51", "ssv2", "epic", "csv", "folder"] = "folder"
    root: str = ""  # dataset folder
    train: str = "train"  # an annotation file, a split number (ucf101 / hmdb51), or a folder (folder)
    val: str = "val"  # the validation split (as data.train); picks best.pt and is what `videoformer eval` scores
    annotations: str = ""  # split-file folder (ucf101 / hmdb51) or labels.json (ssv2), under root if relative
    input: Literal["rgb", "compressed"] = "rgb"  # compressed: MM-ViT on a `videoformer extract` cache
    sampler: Literal["dense", "uniform"] | None = None  # None: the weights' / model family's (model.preprocessing)
    # frames between sampled frames (dense); None: the weights' / model family's
    stride: Annotated[int | None, AT_LEAST_1] = None


@dataclass
class DataConfig(Augment, DataSource):
    """The ``data`` section: :class:`DataSource` keys, then the training augmentation (:class:`Augment`, the
    fields ``VideoTransform`` takes: ``crop``, ``min_scale``, ``max_scale``, ``flip_prob``,
    ``color_jitter_prob``, ``randaug_layers``, ``randaug_magnitude``), then the loading keys below."""

    audio_weights: str = ""  # VGGish weights for compressed input with audio (default: the data module's fallback)
    num_workers: Annotated[int, AT_LEAST_0] = 0  # DataLoader processes decoding videos (0: in the main process)
    max_fail_fraction: Annotated[float, FRACTION] = 0.1  # share of unreadable training samples (over all workers)


@dataclass
class TrainConfig:
    epochs: Annotated[int, AT_LEAST_1] = 30  # raise it and re-run to train a finished run longer
    batch_size: Annotated[int, AT_LEAST_1] = 8  # global batch per optimiser step is batch_size * accum_steps
    accum_steps: Annotated[int, AT_LEAST_1] = 1  # micro-batches whose gradients are summed per optimiser step
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: Annotated[float, POSITIVE] = 0.1  # peak learning rate (after warm-up)
    momentum: Annotated[float, FRACTION] = 0.9  # sgd
    nesterov: bool = False  # sgd
    weight_decay: Annotated[float, AT_LEAST_0] = 0.0  # not applied to biases, norms, positional embeddings, CLS
    # adamw (beta1, beta2)
    betas: Annotated[list[Annotated[float, Range(0, 1, hi_open=True)]], Length(2)] = field(
        default_factory=lambda: [0.9, 0.999])
    schedule: Literal["cosine", "step", "plateau", "constant"] = "cosine"  # learning-rate schedule after warm-up
    warmup_epochs: Annotated[float, AT_LEAST_0] = 0.0  # linear warm-up from 0 (fractions of an epoch allowed)
    min_lr: Annotated[float, AT_LEAST_0] = 0.0  # <= lr
    milestones: list[Annotated[int, AT_LEAST_1]] = field(default_factory=list)  # step decay: epochs where lr *= gamma
    gamma: Annotated[float, Range(0, 1, lo_open=True)] = 0.1  # step / plateau decay factor
    plateau_patience: Annotated[int, AT_LEAST_0] = 2  # plateau decay: epochs without val gain before lr *= gamma
    label_smoothing: Annotated[float, Range(0, 1, hi_open=True)] = 0.0
    mixup_alpha: Annotated[float, AT_LEAST_0] = 0.0  # Beta(alpha, alpha) mixup of clips (0: off; RGB input only)
    cutmix_alpha: Annotated[float, AT_LEAST_0] = 0.0  # CutMix (0: off)
    mixup_prob: Annotated[float, FRACTION] = 1.0  # share of batches mixed
    mixup_switch_prob: Annotated[float, FRACTION] = 0.5  # share of mixed batches using CutMix when both are on
    # max gradient norm; null or 0: no clipping (a negative value is an error, never "off")
    clip_grad: Annotated[float | None, Range(0, hint="use train.clip_grad=null (or 0) to turn clipping off")] = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp16 needs a GPU
    device: Annotated[str, Device()] = "auto"  # auto: cuda when available
    # CPU threads of the main process; null: one per physical core this process may use, less one per
    # DataLoader worker (and shared by the processes of a CPU DDP run)
    threads: Annotated[int | None, AT_LEAST_1] = None
    seed: Annotated[int, AT_LEAST_0] = 0  # data order, augmentation, initialisation
    deterministic: bool = False  # deterministic kernels: a resumed run is bit-identical to an uninterrupted one
    checkpoint_every: Annotated[int, AT_LEAST_0] = 0  # steps between mid-epoch `last` checkpoints (0: epoch ends only)
    eval_every: Annotated[int, AT_LEAST_1] = 1  # epochs
    progress: bool = True  # progress bars
    reports: bool = True  # TensorBoard scalars and PNG plots, when tensorboard / matplotlib import


@dataclass
class EvalConfig:
    num_clips: Annotated[int, AT_LEAST_1] = 1  # K temporal clips
    num_crops: Literal[1, 3] = 1  # S spatial crops
    batch_size: Annotated[int, AT_LEAST_1] = 8  # videos per forward pass (each brings its K x S views)
    precision: Literal["fp32", "bf16", "fp16"] | None = None  # eval / predict / validation autocast; null: train.precision


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/default"  # the run directory: config.yaml, metrics.jsonl, checkpoints/{last,best}.pt

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write the resolved config as YAML (atomically)."""
        from ..fileio import atomic_write

        text = yaml.safe_dump(self.to_dict(), sort_keys=False).encode()
        atomic_write(Path(path), lambda f: f.write(text))


# Names other libraries use for our keys (difflib cannot see that ``learning_rate`` is ``lr``).
SYNONYMS = {"learning_rate": "lr", "base_lr": "lr", "wd": "weight_decay", "epoch": "epochs", "num_epochs": "epochs",
            "max_epochs": "epochs", "bs": "batch_size", "batchsize": "batch_size", "warmup": "warmup_epochs",
            "lr_schedule": "schedule", "scheduler": "schedule", "optim": "optimizer", "workers": "num_workers",
            "output": "output_dir", "out_dir": "output_dir", "model_name": "name", "arch": "name",
            "frames": "num_frames", "image_size": "img_size", "classes": "num_classes", "amp": "precision",
            "dataset": "format", "seed_value": "seed", "grad_clip": "clip_grad", "clip_grad_norm": "clip_grad"}


def _hint(name: str, valid: Sequence[str], where: str = "") -> str:
    """``did you mean ...?`` for an unknown key: close spellings and synonyms in its own section, the same
    key in another section (a top-level ``lr`` is ``train.lr``), or a model-family field, which goes under
    ``model.overrides``."""
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    if SYNONYMS.get(name) in valid:
        close = [SYNONYMS[name], *(c for c in close if c != SYNONYMS[name])]
    if not close:
        sections = {f.name: f.default_factory() for f in dataclasses.fields(Config) if f.default_factory is not
                    dataclasses.MISSING}
        for section, obj in sections.items():
            names = [f.name for f in dataclasses.fields(obj)]
            key = name if name in names else SYNONYMS.get(name)
            if key in names and section != where:
                close.append(f"{section}.{key}")
    if not close and where == "model" and name in _family_fields():
        close = [f"model.overrides.{name} (a field of the model family's config)"]
    return (f"did you mean {', '.join(close)}? " if close else "") + f"valid keys: {', '.join(valid)}"


def _family_fields() -> set[str]:
    """Fields of every registered model family's config dataclass (the keys ``model.overrides`` takes)."""
    from ..models.registry import _REGISTRY

    return {f.name for spec in _REGISTRY.values() for f in dataclasses.fields(spec.config_cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against (and, for strings from the command line, parsed as) the annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:  # ranges are checked by validate(), once every override is in
        return _coerce(value, args[0], where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is Literal:
        if isinstance(value, bool) or value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp in (int, float):  # ints are accepted where numbers are, never bools
        what, accepted = ("an integer", (int,)) if tp is int else ("a number", (int, float))
        if isinstance(value, str):
            try:
                value = tp(value)
            except ValueError:
                raise ConfigError(f"{where}: expected {what}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise ConfigError(f"{where}: expected {what}, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return tp(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _merge(obj: Any, values: Mapping[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj), include_extras=True)
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where + ': ' if where else ''}unknown key {key!r}; {_hint(str(key), names, where)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {key!r} is a section; expected a mapping, got {value!r}")
            _merge(current, value, f"{where}.{key}" if where else key)
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}.{key}" if where else key))


def apply_override(config: Config, override: str) -> None:
    """Apply one ``section.key=value`` override (the value is parsed as YAML first: numbers, lists, null)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key=value, e.g. train.lr=0.01")
    key, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (int, float)) and not isinstance(value, bool) and raw.strip() != str(value):
        value = raw  # keep e.g. "001" as written; the field type decides
    parts = key.strip().split(".")
    if parts[0] == "model" and len(parts) == 3 and parts[1] in ("overrides", "preprocessing"):  # free-form maps
        getattr(config.model, parts[1])[parts[2]] = value
        return
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    _merge(config, nested, "")


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """The :class:`Config` of a YAML file (or the defaults) with the command-line overrides applied."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from err
        if not isinstance(values, Mapping):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(values).__name__}")
        try:
            _merge(config, values, "")
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    for override in overrides:
        apply_override(config, override)
    validate(config)
    return config


def _check(value: Any, tp: Any, where: str) -> None:
    """Apply the checks declared in ``tp`` (``Annotated`` metadata, also inside lists and optionals)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None:
        return
    if origin is Annotated:
        _check(value, args[0], where)
        for rule in tp.__metadata__:
            rule.check(value, where)
    elif origin is list and args:
        for i, v in enumerate(value):
            _check(v, args[0], f"{where}[{i}]")
    elif origin in (typing.Union, types.UnionType):
        for arg in (a for a in args if a is not type(None)):
            _check(value, arg, where)


def _check_fields(obj: Any, where: str) -> None:
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            _check_fields(value, key)
        else:
            _check(value, hints[f.name], key)


def validate(config: Config) -> None:
    """Every field against the range its declaration states, then the rules that tie fields together; runs
    before anything is built (and after the overrides of ``eval`` / ``predict``)."""
    _check_fields(config, "")
    t, d = config.train, config.data
    if t.schedule == "step" and not t.milestones:
        raise ConfigError("train.schedule=step needs train.milestones (epochs), e.g. train.milestones=[20,30]")
    if t.min_lr > t.lr:
        raise ConfigError(f"train.min_lr={t.min_lr} exceeds train.lr={t.lr}")
    if d.min_scale > d.max_scale:
        raise ConfigError(f"data.min_scale={d.min_scale} exceeds data.max_scale={d.max_scale}")
    if not config.output_dir:
        raise ConfigError("output_dir must be set")


def config_from_dict(values: Mapping[str, Any], source: str) -> Config:
    """The :class:`Config` saved in a run directory or checkpoint."""
    config = Config()
    try:
        _merge(config, values, "")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return config
