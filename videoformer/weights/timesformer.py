"""Official TimeSformer checkpoints (facebookresearch/TimeSformer, ``.pyth``) -> videoformer.

The release files are PySlowFast training checkpoints: ``{"epoch", "model_state", "optimizer_state", "cfg"}``
with ``cfg`` the YAML dump of the run's config and ``model_state`` the state dict of the
``vit_base_patch16_224`` wrapper, whose keys start with ``model.`` (``timesformer/utils/checkpoint.py``,
``timesformer/models/vit.py``). A bare state dict in that layout, with or without the ``model.`` prefix, is
read too when it is recognisably a video model (it has ``time_embed``); a space-only state dict with the
prefix stripped and no wrapper is, key for key, an image ViT and is left to ``init_from_image``.

What changes on the way: the per-frame ``Conv2d`` patch filter ``(D, C, p, p)`` becomes our ``(D, C, 1, p, p)``;
``pos_embed`` / ``time_embed`` become ``pos_embed.space`` / ``pos_embed.time`` (``pos_embed.pos`` for space-only);
divided blocks' ``temporal_norm1`` / ``temporal_attn`` / ``temporal_fc`` are our first sublayer and ``norm1`` /
``attn`` the second; ``norm2`` / ``mlp`` the MLP. No weight depends on token order, so the official ``(h w t)``
order needs no permutation. The official conventions become config choices: ``pos_resize="nearest"`` (its
rule at other input sizes) and, for space-only, ``readout="mean_tokens"`` (tokens averaged over frames before
the final LayerNorm). Heads are not recorded in the file: ViT-B's 12 (64-wide heads) unless ``num_heads=``.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import yaml

from ..data.preprocessing import Preprocessing
from ..models import TimeSformerConfig, get_spec
from .common import (CheckpointError, Converted, Format, Rule, convert_by_rules, heads_of, model_shapes,
                     register_format, tensor_dict, vit_rules)

_ANCHORS = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight")
ATTENTION_TYPES = {"divided_space_time": "divided", "joint_space_time": "joint", "space_only": "space"}
_DIVIDED = {"norms.0": "temporal_norm1", "attns.0.qkv": "temporal_attn.qkv", "attns.0.proj": "temporal_attn.proj",
            "attns.0.fc": "temporal_fc", "norms.1": "norm1", "attns.1.qkv": "attn.qkv", "attns.1.proj": "attn.proj"}
_SINGLE = {"norms.0": "norm1", "attns.0.qkv": "attn.qkv", "attns.0.proj": "attn.proj"}
_MLP = {"norm_mlp": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def _prefix(state: Mapping[str, Any]) -> str:
    return "model." if any(k.startswith("model.blocks.") for k in state) else ""


def _state(obj: Any) -> Mapping[str, Any] | None:
    """The ``model_state`` of a release file, or a bare state dict, in the official layout; else None."""
    state = tensor_dict(obj, ("model_state",))
    if state is None:
        return None
    p = _prefix(state)
    if not all(p + k in state for k in _ANCHORS) or state[p + "patch_embed.proj.weight"].ndim != 4:
        return None
    wrapped = isinstance(obj, Mapping) and "model_state" in obj
    return state if (p or wrapped or "time_embed" in state) else None


def _cfg(obj: Any, source: str) -> dict[str, Any]:
    """The run config of a release file (``cfg``: a YAML string, or a mapping), or {}."""
    raw = obj.get("cfg") if isinstance(obj, Mapping) else None
    if raw is None:
        return {}
    try:
        cfg = yaml.safe_load(raw) if isinstance(raw, str) else raw
    except yaml.YAMLError as err:
        raise CheckpointError(f"{source}: its 'cfg' entry is not a readable YAML config: {err}") from err
    return dict(cfg) if isinstance(cfg, Mapping) else {}


def _get(cfg: Mapping[str, Any], path: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _scheme(state: Mapping[str, Any], p: str, cfg: Mapping[str, Any], source: str) -> str:
    attention = _get(cfg, "TIMESFORMER.ATTENTION_TYPE")
    if attention is not None:
        if attention not in ATTENTION_TYPES:
            raise CheckpointError(f"{source}: TIMESFORMER.ATTENTION_TYPE={attention!r} is not one of "
                                  f"{sorted(ATTENTION_TYPES)}")
        return ATTENTION_TYPES[attention]
    if p + "blocks.0.temporal_attn.qkv.weight" in state:
        return "divided"
    return "joint" if p + "time_embed" in state else "space"


def registry_name(scheme: str, num_frames: int, img_size: int) -> str:
    """The paper's name of a TimeSformer: -HR (16 x 448²), -L (long clips of 224²: 96 on Kinetics, 64 on
    SSv2), else the 8 x 224² model of Table 1 (any scheme)."""
    if scheme == "divided" and img_size == 448:
        return "timesformer_hr"
    if scheme == "divided" and num_frames >= 64:
        return "timesformer_l"
    return f"timesformer_b16_{scheme}"


def _rules(scheme: str, p: str):
    block = {**(_DIVIDED if scheme == "divided" else _SINGLE), **_MLP}
    fixed = {"cls_token": Rule((p + "cls_token",)),
             "patch_embed.proj.weight": Rule((p + "patch_embed.proj.weight",), "frame_conv"),
             "patch_embed.proj.bias": Rule((p + "patch_embed.proj.bias",)),
             "pos_embed.pos": Rule((p + "pos_embed",)), "pos_embed.space": Rule((p + "pos_embed",)),
             "pos_embed.time": Rule((p + "time_embed",))}

    return vit_rules(fixed, p + "norm", p + "head", p + "blocks.{}", block)


def convert_official(obj: Any, source: str, model: str | None = None,
                     overrides: Mapping[str, Any] | None = None) -> Converted:
    """A release file's contents (or a state dict in its layout) -> :class:`Converted` for our TimeSformer."""
    overrides = dict(overrides or {})
    state = _state(obj)
    if state is None:
        raise CheckpointError(f"{source}: not an official TimeSformer checkpoint")
    cfg, p = _cfg(obj, source), _prefix(state)
    scheme = _scheme(state, p, cfg, source)
    conv = state[p + "patch_embed.proj.weight"]
    dim, patch = conv.shape[0], conv.shape[-1]
    grid = state[p + "pos_embed"].shape[1] - 1
    side = math.isqrt(grid)
    if side * side != grid:
        raise CheckpointError(f"{source}: pos_embed holds {grid} patch positions, not a square grid")
    frames = (state[p + "time_embed"].shape[1] if p + "time_embed" in state
              else int(overrides.get("num_frames", _get(cfg, "DATA.NUM_FRAMES", 8))))
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(re.escape(p) + r"blocks\.(\d+)\.", k)))
    hidden = state[p + "blocks.0.mlp.fc1.weight"].shape[0]
    head = state.get(p + "head.weight")
    config = dict(num_classes=head.shape[0] if head is not None else 0, num_frames=frames, img_size=side * patch,
                  in_chans=conv.shape[1], patch_size=patch, dim=dim, depth=depth,
                  num_heads=heads_of(dim, overrides, source), mlp_ratio=hidden / dim,
                  qkv_bias=p + "blocks.0.attn.qkv.bias" in state, act="gelu", norm_eps=1e-6, drop_path_rate=0.1,
                  scheme=scheme, pos_resize="nearest", readout="mean_tokens" if scheme == "space" else "mean_logits")
    name = model or registry_name(scheme, frames, config["img_size"])
    if get_spec(name).config_cls is not TimeSformerConfig:
        raise CheckpointError(f"{source} is an official TimeSformer checkpoint; {name!r} is not a TimeSformer model")
    expected = model_shapes(name, config)
    converted = convert_by_rules(expected, _rules(scheme, p), state, source, "the official TimeSformer")
    return Converted(name, config, converted, source, _preprocessing(cfg, config))


def _preprocessing(cfg: Mapping[str, Any], config: Mapping[str, Any]) -> Preprocessing | None:
    """The release's input convention from its run config (PySlowFast defaults where it is silent); None
    without a config (then the registered model's, which is the same for the released models)."""
    if not cfg:
        return None
    dataset = str(_get(cfg, "TEST.DATASET", _get(cfg, "TRAIN.DATASET", ""))).lower()
    return Preprocessing(mean=tuple(_get(cfg, "DATA.MEAN", [0.45] * 3)), std=tuple(_get(cfg, "DATA.STD", [0.225] * 3)),
                         img_size=int(_get(cfg, "DATA.TEST_CROP_SIZE", config["img_size"])), resize=None,
                         num_frames=config["num_frames"], stride=int(_get(cfg, "DATA.SAMPLING_RATE", 8)),
                         sampler="uniform" if dataset == "ssv2" else "dense")


OFFICIAL = register_format(Format("timesformer", lambda obj: _state(obj) is not None, convert_official))
