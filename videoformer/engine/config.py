"""Run configuration: YAML files in ``configs/`` mapped onto dataclasses, ``key=value`` dotted overrides.

Every key and every enumerated value is checked before anything is built; a mistake raises
:class:`ConfigError` naming the file or override and listing the valid choices.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml


class ConfigError(ValueError):
    """An unknown key, a value of the wrong type or outside its choices, or an unreadable config file."""


@dataclass
class ModelConfig:
    name: str = "vit_tiny_framewise"
    num_frames: int | None = None  # None: the registered default
    img_size: int | None = None
    num_classes: int | None = None  # None: from the dataset's class list
    # Pretrained weights: any video checkpoint load_pretrained reads (official release file, Hugging Face or
    # videoformer directory, run) -- the model takes its architecture and input convention -- or an image ViT
    # (HF / timm / npz) for ViViT §3.4 initialisation.
    pretrained: str | None = None
    drop_path_rate: float | None = None
    freeze: list[str] = field(default_factory=list)  # glob patterns over parameter names, e.g. "blocks.0.*"
    grad_checkpointing: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  # further fields of the family's config dataclass
    # Input convention (Preprocessing fields: mean, std, resize, ...): empty = the weights' own, else the model
    # family's. Keys set here win over the weights'; train writes the resolved convention back here.
    preprocessing: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    format: Literal["kinetics", "ucf101", "hmdb51", "ssv2", "epic", "csv", "folder"] = "folder"
    root: str = ""
    train: str = "train"  # an annotation file, a split number (ucf101 / hmdb51), or a folder (folder)
    val: str = "val"
    annotations: str = ""  # split-file folder (ucf101 / hmdb51) or labels.json (ssv2), under root if relative
    input: Literal["rgb", "compressed"] = "rgb"
    sampler: Literal["dense", "uniform"] | None = None  # None: the weights' / model family's (model.preprocessing)
    stride: int | None = None  # frames between sampled frames (dense); None: the weights' / model family's
    crop: Literal["scale_jitter", "random_resized"] = "scale_jitter"
    min_scale: float = 0.9
    max_scale: float = 1.33
    flip_prob: float = 0.5
    color_jitter_prob: float = 0.0
    randaug_layers: int = 0
    randaug_magnitude: int = 15
    audio_weights: str = ""  # VGGish weights for compressed input with audio (default: the data module's fallback)
    num_workers: int = 0
    max_fail_fraction: float = 0.1


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 8  # global batch per optimiser step is batch_size * accum_steps
    accum_steps: int = 1
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: Literal["cosine", "step", "plateau", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    milestones: list[int] = field(default_factory=list)  # step decay: epochs where lr *= gamma
    gamma: float = 0.1
    plateau_patience: int = 2  # plateau decay: epochs without val top-1 improvement before lr *= gamma
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    clip_grad: float | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"  # auto: cuda when available
    seed: int = 0
    deterministic: bool = False
    checkpoint_every: int = 0  # optimiser steps between mid-epoch `last` checkpoints (0: end of epoch only)
    eval_every: int = 1  # epochs
    progress: bool = True
    reports: bool = True  # TensorBoard scalars and PNG plots, when tensorboard / matplotlib import


@dataclass
class EvalConfig:
    num_clips: int = 1  # K temporal clips
    num_crops: int = 1  # S spatial crops
    batch_size: int = 8


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/default"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write the resolved config as YAML (atomically)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        os.replace(tmp, path)


def _hint(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    return (f"did you mean {', '.join(close)}? " if close else "") + f"valid keys: {', '.join(valid)}"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against (and, for strings from the command line, parsed as) the annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
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
        if value not in args:
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
                return tp(value)
            except ValueError:
                raise ConfigError(f"{where}: expected {what}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise ConfigError(f"{where}: expected {what}, got {value!r}")
        return tp(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _merge(obj: Any, values: Mapping[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}; {_hint(str(key), names)}")
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


def validate(config: Config) -> None:
    """Range checks that do not need the model or the data."""
    t = config.train
    for name in ("epochs", "batch_size", "accum_steps", "eval_every"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be > 0, got {t.lr}")
    if not 0.0 <= t.label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}")
    if t.schedule == "step" and not t.milestones:
        raise ConfigError("train.schedule=step needs train.milestones (epochs), e.g. train.milestones=[20,30]")
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas needs two values, got {t.betas}")
    if config.eval.num_clips < 1 or config.eval.num_crops not in (1, 3):
        raise ConfigError(f"eval.num_clips must be >= 1 and eval.num_crops 1 or 3, got "
                          f"{config.eval.num_clips}, {config.eval.num_crops}")
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
