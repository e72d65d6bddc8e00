"""The run's model: a registry name, optional local pretrained weights, frozen parameters, and the input
convention (``model.preprocessing``) every data path of the run uses.

Preprocessing precedence (one resolution, :func:`resolve_preprocessing`, used by train, eval and predict):
``data.sampler`` / ``data.stride`` when set > ``model.preprocessing.*`` keys when set > the pretrained video
weights' own convention > the registered model family's default. Frames and crop size are always the model's
(``model.num_frames`` / ``model.img_size``, else the weights', else the registry's). ``train`` writes the
resolved convention into ``model.preprocessing`` of the saved config, so a run carries it to eval and predict.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..data.preprocessing import Preprocessing
from ..models import MMViT, create_model, get_spec, init_mmvit_from_image, model_config
from ..models.registry import config_fields
from ..weights import CheckpointError, init_from_image, load_pretrained
from ..weights.common import detect_format
from ..weights.pretrained import read_source, transfer
from .config import Config, ConfigError, ModelConfig, config_from_dict

_OWN_FIELDS = ("num_classes", "num_frames", "img_size")


def model_kwargs(cfg: ModelConfig, num_classes: int) -> dict[str, Any]:
    """``create_model`` keyword arguments of a model section."""
    extra = dict(cfg.overrides)
    if cfg.drop_path_rate is not None:
        extra["drop_path_rate"] = cfg.drop_path_rate
    return dict(num_classes=num_classes, num_frames=cfg.num_frames, img_size=cfg.img_size, **extra)


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """``create_model`` with the config's sizes; a bad name or field is a :class:`ConfigError`."""
    try:
        return create_model(cfg.name, **model_kwargs(cfg, num_classes))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model: {err}") from None


def resolve_preprocessing(model: nn.Module, cfg: Config) -> Preprocessing:
    """The run's input convention (precedence in the module docstring); frames and size are ``model``'s."""
    return _resolve(model.preprocessing, model.registry_name, model.cfg, cfg)


def _resolve(weights: Preprocessing | None, name: str, model_cfg: Any, cfg: Config) -> Preprocessing:
    base = weights or get_spec(name).default_preprocessing(model_cfg)
    values = {**base.to_dict(), **cfg.model.preprocessing}
    values.update({k: getattr(cfg.data, k) for k in ("sampler", "stride") if getattr(cfg.data, k) is not None})
    values.update(num_frames=model_cfg.num_frames, img_size=model_cfg.img_size)
    if "resize" not in cfg.model.preprocessing and base.resize and base.img_size != model_cfg.img_size:
        values["resize"] = round(base.resize * model_cfg.img_size / base.img_size)
    try:
        return Preprocessing.from_dict(values, "model.preprocessing")
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def record_model(cfg: Config, model: nn.Module) -> None:
    """Write what the run's model is into ``cfg.model`` (frames, size, family fields that differ from the
    registered defaults, the resolved preprocessing), so the saved config rebuilds it without the weights."""
    defaults = config_fields(model_config(cfg.model.name))
    own = model.registry_config
    cfg.model.num_frames, cfg.model.img_size = own["num_frames"], own["img_size"]
    cfg.model.overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in own.items()
                           if k not in _OWN_FIELDS and k != "drop_path_rate" and v != defaults.get(k)}
    if cfg.model.drop_path_rate is None and own.get("drop_path_rate") != defaults.get("drop_path_rate"):
        cfg.model.overrides["drop_path_rate"] = own["drop_path_rate"]
    cfg.model.preprocessing = model.preprocessing.to_dict()


def _video_source(path: str) -> tuple[str, str] | None:
    """``(file or directory name, format name)`` of a video checkpoint ``load_pretrained`` reads, or None for
    an image checkpoint (read errors such as pickled objects propagate)."""
    obj, name = read_source(path)
    try:
        return name, detect_format(obj, name).name
    except CheckpointError:
        return None


def _label(source: tuple[str, str], src: nn.Module) -> str:
    """How messages name a video checkpoint: ``.../best.pt (a vit_tiny_framewise run)``."""
    return f"{source[0]} (a {src.registry_name} {'run' if source[1] == 'videoformer-run' else 'model'})"


def pretrained_model(cfg: Config, num_classes: int) -> nn.Module:
    """The run's model: built from ``cfg.model``, with ``model.pretrained`` loaded. A video checkpoint of
    ``model.name``'s family gives the architecture (its config fields, conventions and input convention;
    ``model.num_frames`` / ``img_size`` / ``drop_path_rate`` / ``overrides`` set in the config win, positional
    embeddings resized to them) and a fresh head when the class count differs; one of another family loads
    strictly into the registered ``model.name`` (a mismatch lists the keys); an image ViT initialises the
    registered model (ViViT §3.4). The resolved model and preprocessing are written back into ``cfg.model``
    (:func:`record_model`)."""
    mc = cfg.model
    path = mc.pretrained
    if path and not Path(path).exists():
        raise ConfigError(f"model.pretrained: {path} does not exist")
    source = _video_source(path) if path else None
    if source is not None:
        src = load_pretrained(path, **mc.overrides)  # fields the file does not record (num_heads) come from here
        if get_spec(mc.name).config_cls is get_spec(src.registry_name).config_cls:
            explicit = {k: v for k, v in model_kwargs(mc, num_classes).items() if v is not None}
            try:
                model = create_model(mc.name, **{**src.registry_config, **explicit})
            except (ValueError, TypeError) as err:
                raise ConfigError(f"model: {err}") from None
            model.preprocessing = src.preprocessing
        else:
            model = build_model(mc, num_classes)
        transfer(src, model, _label(source, src))
    else:
        model = build_model(mc, num_classes)
        if path:
            load_pretrained_weights(model, path)
    model.preprocessing = resolve_preprocessing(model, cfg)
    record_model(cfg, model)
    return model


def load_pretrained_weights(model: nn.Module, path: str) -> None:
    """Load ``path`` into an already built ``model``: a video checkpoint of the same family (any format
    ``load_pretrained`` reads; positional embeddings resized, a fresh head when the class count differs), or an
    image ViT (HF directory, timm file, JAX ``.npz``) initialising the video model as in ViViT §3.4 (MM-ViT:
    ``init_mmvit_from_image``). Prefer :func:`pretrained_model`, which also takes the weights' architecture."""
    if not Path(path).exists():
        raise ConfigError(f"model.pretrained: {path} does not exist")
    source = _video_source(path)
    if source is not None:
        src = load_pretrained(path)
        transfer(src, model, _label(source, src))
    elif isinstance(model, MMViT):
        init_mmvit_from_image(model, path)
    else:
        init_from_image(model, path)


# A run saved before weights carried their preprocessing trained with ImageNet statistics (and its data
# section's sampler / stride, which its config.yaml records): that convention, as model.preprocessing keys.
LEGACY_PREPROCESSING = {k: list(getattr(Preprocessing(), k)) for k in ("mean", "std")}


def run_model_config(state: Mapping[str, Any], source: str) -> tuple[str, dict[str, Any], Preprocessing]:
    """Registry name, config fields and preprocessing of the model of a training checkpoint ``state``."""
    cfg = config_from_dict(state["config"], source)
    if "preprocessing" not in state["config"].get("model", {}):
        cfg.model.preprocessing = dict(LEGACY_PREPROCESSING)
    heads = state.get("heads") or [state["model"]["head.bias"].shape[0]]
    try:
        model_cfg = model_config(cfg.model.name, **model_kwargs(cfg.model, sum(heads)))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{source}: its model section does not build: {err}") from err
    return cfg.model.name, config_fields(model_cfg), _resolve(None, cfg.model.name, model_cfg, cfg)


def freeze(model: nn.Module, patterns: list[str]) -> int:
    """Stop gradients of parameters whose names match any glob pattern; returns how many tensors froze."""
    names = [n for n, _ in model.named_parameters()]
    frozen = 0
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatch(n, pattern) or n.startswith(pattern + ".")]
        if not hits:
            tops = sorted({n.split(".")[0] for n in names})
            raise ConfigError(f"model.freeze: {pattern!r} matches no parameter; top-level modules: {', '.join(tops)}")
        for name, param in model.named_parameters():
            if name in hits and param.requires_grad:
                param.requires_grad_(False)
                frozen += 1
    return frozen
