"""``load_pretrained``: one entry point for every pretrained video model, and ``save_pretrained``.

``load_pretrained(source, model=None, **overrides)`` reads a file with :func:`read_file` (any suffix: the
container is recognised from the contents) or a directory, asks every registered :class:`Format` whether it
recognises the contents (exactly one must), converts, and loads the weights strictly into the registered
architecture the format names (``model`` where the file does not say). Formats: ``timesformer`` (official
``.pyth``), ``tokshift`` (TokShift-Transformer / MSCA ``.pth``), ``huggingface`` (a ``transformers`` directory),
``videoformer`` (a directory written by ``save_pretrained`` / ``videoformer convert``), ``videoformer-run``
(a training checkpoint; a run directory means its ``best.pt``, else ``last.pt``), plus those other modules
register (Scenic ViViT, PySlowFast / torchvision MViT).

``overrides`` are config fields. Those the file does not record (``num_heads``, ``num_frames`` of a model
without a time embedding) go to the converter; the others (``num_frames``, ``img_size``, ``num_classes``, ...)
make a second model into which the checkpoint's weights are transferred: positional embeddings resized by the
model's own rule (``pos_resize``), a fresh classifier when the class count differs, every other tensor equal
in shape or a :class:`CheckpointMismatchError`.

The model comes back in eval mode with ``model.registry_name``, ``model.preprocessing`` (the release's input
convention, else the registered family's) and ``model.classes`` (class names when the file has them).

``save_pretrained(model, directory)`` writes ``config.json`` (registry name, config, preprocessing, classes) and
``model.safetensors``: a self-describing directory that ``load_pretrained(directory)`` reads with no argument.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file
from torch import nn

from ..data.preprocessing import Preprocessing
from ..layers import JointPosEmbed, SeparablePosEmbed
from ..models import create_model, get_spec
from .common import (CheckpointError, Converted, Directory, Format, detect_format, load_checked, read_file,
                     register_format)

FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def read_source(path: str | os.PathLike) -> tuple[Any, str]:
    """The contents of a checkpoint source and its name for messages: a file's (:func:`read_file`), a run
    directory's best / last checkpoint, or a :class:`Directory` for any other directory."""
    path = Path(path)
    if path.is_dir():
        for which in ("best", "last"):
            ckpt = path / "checkpoints" / f"{which}.pt"
            if ckpt.is_file():
                return read_file(ckpt), str(ckpt)
        if not (path / CONFIG_FILE).is_file():
            raise CheckpointError(f"{path} is not a checkpoint directory: checkpoints/last.pt does not exist (a run) "
                                  f"and there is no {CONFIG_FILE} (a Hugging Face or videoformer directory)")
        return Directory.open(path), str(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return read_file(path), str(path)


def transfer(src: nn.Module, dst: nn.Module, source: str) -> nn.Module:
    """Load ``src``'s weights into ``dst`` (same family, possibly other frames / size / classes): positional
    embeddings resized by ``src``'s rule, ``dst``'s own fresh classifier where the class count differs, every
    other tensor strictly (:class:`CheckpointMismatchError` otherwise). Returns ``dst``."""
    state = dict(src.state_dict())
    own = dst.state_dict()
    src_modules = dict(src.named_modules())
    with torch.no_grad():
        for name, module in dst.named_modules():
            if isinstance(module, (JointPosEmbed, SeparablePosEmbed)) and type(src_modules.get(name)) is type(module):
                for key, value in src_modules[name].resized(module.grid).items():
                    state[f"{name}.{key}" if name else key] = value
    for key in ("head.weight", "head.bias"):
        if key in state and key in own and state[key].shape != own[key].shape:
            state[key] = own[key]
    return load_checked(dst, state, source)


def _preprocessing_for(pre: Preprocessing, model: nn.Module) -> Preprocessing:
    """``pre`` at ``model``'s frames and crop (the short side scaled along with the crop)."""
    cfg = model.cfg
    resize = round(pre.resize * cfg.img_size / pre.img_size) if pre.resize else None
    return dataclasses.replace(pre, num_frames=cfg.num_frames, img_size=cfg.img_size, resize=resize)


def from_converted(conv: Converted, overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """The model of a :class:`Converted` checkpoint (strict load into its own architecture), then, if
    ``overrides`` change its config, transferred into a model built with them (see :func:`transfer`)."""
    try:
        model = create_model(conv.model, **conv.config)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{conv.source}: its architecture does not build as {conv.model}: {err}") from err
    load_checked(model, conv.state_dict, conv.source)
    pre = conv.preprocessing or model.preprocessing
    changed = {k: v for k, v in (overrides or {}).items() if model.registry_config.get(k, object()) != v}
    if changed:
        try:
            target = create_model(conv.model, **{**model.registry_config, **changed})
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{conv.source}: overrides {changed} do not fit {conv.model}: {err}") from err
        model = transfer(model, target, conv.source)
    model.preprocessing = _preprocessing_for(pre, model)
    model.classes = conv.classes if _class_count(conv.classes) == model.cfg.num_classes else None
    return model.eval()


def _class_count(classes: list[str] | dict[str, list[str]] | None) -> int | None:
    if isinstance(classes, dict):
        return sum(len(v) for v in classes.values())
    return None if classes is None else len(classes)


def convert(source: str | os.PathLike, model: str | None = None, **overrides: Any) -> Converted:
    """The :class:`Converted` checkpoint of ``source`` (the format recognised from its contents)."""
    obj, name = read_source(source)
    fmt = detect_format(obj, name)
    return fmt.convert(obj, name, model, dict(overrides))


def load_pretrained(source: str | os.PathLike, model: str | None = None, **overrides: Any) -> nn.Module:
    """The videoformer model of a pretrained video checkpoint, in eval mode (see the module docstring).

    ``source``: an official release file (TimeSformer ``.pyth``, TokShift ``.pth``, Scenic ViViT, PySlowFast /
    torchvision MViT), a Hugging Face directory, a directory written by ``save_pretrained``, a videoformer run
    directory or training checkpoint. ``model``: the registry name where the file does not record it.
    ``overrides``: config fields (``num_classes``, ``num_frames``, ``img_size``, ``num_heads``, ...).
    """
    return from_converted(convert(source, model, **overrides), overrides)


def save_pretrained(model: nn.Module, directory: str | os.PathLike,
                    classes: list[str] | dict[str, list[str]] | None = None) -> Path:
    """Write ``model`` as a self-describing directory: ``config.json`` (registry name, config, preprocessing,
    class names) and ``model.safetensors``. ``classes``: class names (default: ``model.classes``)."""
    name = getattr(model, "registry_name", None)
    if name is None:
        raise ValueError("save_pretrained needs a model built by create_model or load_pretrained (its registry "
                         "name is unknown)")
    classes = classes if classes is not None else getattr(model, "classes", None)
    pre = getattr(model, "preprocessing", None) or get_spec(name).default_preprocessing(model.cfg)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"videoformer": FORMAT_VERSION, "model": name, "config": model.registry_config,
            "preprocessing": pre.to_dict(), "classes": classes}
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()},
              directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def _is_export(obj: Any) -> bool:
    return isinstance(obj, Directory) and obj.config is not None and "videoformer" in obj.config


def _convert_export(obj: Directory, source: str, model: str | None, overrides: dict[str, Any]) -> Converted:
    meta, where = obj.config, str(obj.path / CONFIG_FILE)
    missing = [k for k in ("model", "config") if k not in meta]
    if missing or not (obj.path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{where}: a videoformer directory needs 'model' and 'config' in {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE} beside it")
    try:
        pre = Preprocessing.from_dict(meta["preprocessing"], where) if meta.get("preprocessing") else None
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: preprocessing: {err}") from err
    state = read_file(obj.path / WEIGHTS_FILE)
    return Converted(model or meta["model"], dict(meta["config"]), dict(state), str(obj.path / WEIGHTS_FILE), pre,
                     meta.get("classes"))


def _is_run(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "model" in obj and "config" in obj and isinstance(obj["model"], Mapping)


def _convert_run(obj: Mapping[str, Any], source: str, model: str | None, overrides: dict[str, Any]) -> Converted:
    from ..engine.model import run_model_config  # the engine builds on the weights module: import late

    name, config, pre = run_model_config(obj, source)
    classes = obj.get("classes")
    return Converted(model or name, config, dict(obj["model"]), source, pre,
                     classes if isinstance(classes, (list, dict)) else None)


EXPORT = register_format(Format("videoformer", _is_export, _convert_export))
RUN = register_format(Format("videoformer-run", _is_run, _convert_run))
