"""The run's model: a registry name, optional local pretrained weights, frozen parameters."""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import torch
from torch import nn

from ..models import MMViT, create_model, init_mmvit_from_image
from ..weights import CheckpointError, init_from_image, load_pretrained
from ..weights.common import NonFiniteWeightsError, load_checked
from .checkpoint import load_checkpoint
from .config import ConfigError, ModelConfig


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """``create_model`` with the config's sizes; a bad name or field is a :class:`ConfigError`."""
    extra = dict(cfg.overrides)
    if cfg.drop_path_rate is not None:
        extra["drop_path_rate"] = cfg.drop_path_rate
    try:
        return create_model(cfg.name, num_classes=num_classes, num_frames=cfg.num_frames, img_size=cfg.img_size,
                            **extra)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model: {err}") from None


def _transfer(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a video model's weights strictly; a classifier of another size keeps the fresh one."""
    own = model.state_dict()
    for key in ("head.weight", "head.bias"):
        if key in state and key in own and state[key].shape != own[key].shape:
            state[key] = own[key]
    load_checked(model, state, source)


def load_pretrained_weights(model: nn.Module, path: str) -> None:
    """``model.pretrained``: a videoformer run checkpoint (``.pt`` from a run, or a run directory), a Hugging
    Face TimeSformer / ViViT directory, or an image ViT (HF directory, timm file, JAX ``.npz``), initialising
    the video model as in ViViT §3.4 (MM-ViT: ``init_mmvit_from_image``)."""
    p = Path(path)
    if p.is_dir() and (p / "checkpoints" / "last.pt").is_file():
        p = p / "checkpoints" / ("best.pt" if (p / "checkpoints" / "best.pt").is_file() else "last.pt")
    if not p.exists():
        raise ConfigError(f"model.pretrained: {p} does not exist")
    if p.suffix == ".pt" and p.is_file():
        try:
            state = load_checkpoint(p)
        except NonFiniteWeightsError:
            raise
        except CheckpointError:  # not a training checkpoint: an image ViT .pt below
            state = None
        if state is not None:
            _transfer(model, dict(state["model"]), f"{p} (a {state['config']['model']['name']} run)")
            return
    if p.is_dir() and (p / "config.json").is_file():
        model_type = json.loads((p / "config.json").read_text()).get("model_type", "")
        if model_type in ("timesformer", "vivit"):
            _transfer(model, dict(load_pretrained(p).state_dict()), str(p))
            return
    if isinstance(model, MMViT):
        init_mmvit_from_image(model, p)
    else:
        init_from_image(model, p)


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
