"""Hugging Face ``TimesformerForVideoClassification`` / ``VivitForVideoClassification`` checkpoints -> videoformer.

The ``huggingface`` format of ``videoformer.load_pretrained(directory)`` reads ``config.json`` (the
architecture), ``model.safetensors`` or ``pytorch_model.bin`` (sharded or not) and, when present,
``preprocessor_config.json`` (mean / std, short side, crop), and converts the weights with the pure converters
``convert_timesformer`` / ``convert_vivit``. TimeSformer resizes its positional and time embeddings by nearest
neighbour at other input sizes, as Hugging Face (and the official code) do. The result computes, on a clip ``x`` of shape ``(B, C, T, H, W)``,
the logits Hugging Face computes on ``x.permute(0, 2, 1, 3, 4)`` (for ``space_only``: the mean over frames of
its per-frame logits).

What changes on the way: TimeSformer's per-frame ``Conv2d`` patch filter ``(D, C, p, p)`` becomes our
``Conv3d`` filter ``(D, C, 1, p, p)``; its ``position_embeddings`` / ``time_embeddings`` become
``pos_embed.space`` / ``pos_embed.time`` (``pos_embed.pos`` for space-only); ViViT's separate query, key and
value projections are concatenated into our fused ``qkv`` (q | k | v rows, heads contiguous in each). No
weight depends on token order, so Hugging Face's ``(h w t)`` TimeSformer order needs no permutation.
Dropout / stochastic-depth placements differ slightly from Hugging Face's (training only).
"""
from __future__ import annotations

import json
import re
import dataclasses
from pathlib import Path
from typing import Any, Mapping

import torch

from ..data.preprocessing import Preprocessing
from ..models import TimeSformerConfig, ViViT, ViViTConfig, VideoModel, build_timesformer
from .common import (CheckpointError, Converted, Directory, Format, Rule, StateDict, convert_by_rules,
                     read_state_dict, register_format, vit_rules)

SCHEMES = {"space_only": "space", "joint_space_time": "joint", "divided_space_time": "divided"}
ACTIVATIONS = {"gelu": "gelu", "gelu_fast": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")

# Our block parameter -> Hugging Face layer parameter, per attention scheme (divided: temporal sublayer first).
_TIMESFORMER_BLOCK = {
    "divided": {
        "norms.0": "temporal_layernorm", "attns.0.qkv": "temporal_attention.attention.qkv",
        "attns.0.proj": "temporal_attention.output.dense", "attns.0.fc": "temporal_dense",
        "norms.1": "layernorm_before", "attns.1.qkv": "attention.attention.qkv",
        "attns.1.proj": "attention.output.dense",
    },
    "single": {"norms.0": "layernorm_before", "attns.0.qkv": "attention.attention.qkv",
               "attns.0.proj": "attention.output.dense"},
}
_TIMESFORMER_MLP = {"norm_mlp": "layernorm_after", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
# ViViT layer names: the layout transformers < 5 wrote (and the Hub holds), and the in-memory layout of 5.x.
_VIVIT_LAYOUTS = {
    "legacy": dict(layer="vivit.encoder.layer", q="attention.attention.query", k="attention.attention.key",
                   v="attention.attention.value", o="attention.output.dense", fc1="intermediate.dense",
                   fc2="output.dense"),
    "v5": dict(layer="vivit.layers", q="attention.q_proj", k="attention.k_proj", v="attention.v_proj",
               o="attention.o_proj", fc1="mlp.fc1", fc2="mlp.fc2"),
}


def build_model(config: TimeSformerConfig | ViViTConfig) -> VideoModel:
    """The videoformer model of a converted config (TimeSformer of any scheme, or ViViT)."""
    return ViViT(config) if isinstance(config, ViViTConfig) else build_timesformer(config)


def _expected_shapes(config: TimeSformerConfig | ViViTConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_timesformer(state_dict: Mapping[str, torch.Tensor], config: TimeSformerConfig,
                        source: str = "state dict") -> StateDict:
    """``TimesformerForVideoClassification`` state dict -> ours for ``build_timesformer(config)``
    (scheme ``space``, ``joint`` or ``divided``). Raises :class:`CheckpointMismatchError` on any missing,
    unexpected or wrongly shaped key."""
    if config.scheme not in SCHEMES.values():
        raise CheckpointError(f"{source}: Hugging Face TimeSformer has no {config.scheme!r} attention")
    block = {**_TIMESFORMER_BLOCK["divided" if config.scheme == "divided" else "single"], **_TIMESFORMER_MLP}
    fixed = {
        "cls_token": Rule(("timesformer.embeddings.cls_token",)),
        "patch_embed.proj.weight": Rule(("timesformer.embeddings.patch_embeddings.projection.weight",), "frame_conv"),
        "patch_embed.proj.bias": Rule(("timesformer.embeddings.patch_embeddings.projection.bias",)),
        "pos_embed.pos": Rule(("timesformer.embeddings.position_embeddings",)),  # space-only (frame-wise ViT)
        "pos_embed.space": Rule(("timesformer.embeddings.position_embeddings",)),
        "pos_embed.time": Rule(("timesformer.embeddings.time_embeddings",)),
    }

    name_of = vit_rules(fixed, "timesformer.layernorm", "classifier", "timesformer.encoder.layer.{}", block)
    return convert_by_rules(_expected_shapes(config), name_of, state_dict, source, "Hugging Face TimeSformer")


def convert_vivit(state_dict: Mapping[str, torch.Tensor], config: ViViTConfig, source: str = "state dict") -> StateDict:
    """``VivitForVideoClassification`` state dict (the Hub's layout or the transformers 5 in-memory one) -> ours
    for ``ViViT(config)`` (model 1, joint space-time attention, ViViT §3.3)."""
    if config.model != 1:
        raise CheckpointError(f"{source}: Hugging Face ViViT is model 1 (joint attention), got model {config.model}")
    names = _VIVIT_LAYOUTS["v5" if any(k.startswith("vivit.layers.") for k in state_dict) else "legacy"]
    fixed = {
        "cls_token": Rule(("vivit.embeddings.cls_token",)),
        "patch_embed.proj.weight": Rule(("vivit.embeddings.patch_embeddings.projection.weight",)),
        "patch_embed.proj.bias": Rule(("vivit.embeddings.patch_embeddings.projection.bias",)),
        "pos_embed.pos": Rule(("vivit.embeddings.position_embeddings",)),
    }
    block = {"norms.0": "layernorm_before", "attns.0.proj": names["o"], "norm_mlp": "layernorm_after",
             "mlp.fc1": names["fc1"], "mlp.fc2": names["fc2"]}
    name_of = vit_rules(fixed, "vivit.layernorm", "classifier", names["layer"] + ".{}", block,
                        [names[p] for p in "qkv"])
    return convert_by_rules(_expected_shapes(config), name_of, state_dict, source, "Hugging Face ViViT")


def _square(value: Any, what: str, source: str) -> int:
    """An int, or a list of equal ints (Hugging Face allows ``[H, W]``); our configs are square."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or any(not isinstance(v, int) or v != values[0] for v in values):
        raise CheckpointError(f"{source}: {what}={value!r} is not supported (square sizes only)")
    return values[0]


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> TimeSformerConfig | ViViTConfig:
    """Our config equivalent to a Hugging Face ``config.json`` of TimeSformer or ViViT for video classification."""
    archs = hf.get("architectures") or []
    arch = next((a for a in archs if a in ("TimesformerForVideoClassification", "VivitForVideoClassification")), None)
    if arch is None:
        raise CheckpointError(
            f"{source}: unsupported architecture {archs or hf.get('model_type')!r}; expected "
            "TimesformerForVideoClassification or VivitForVideoClassification"
        )
    try:
        return _config(hf, arch, source)
    except KeyError as err:
        raise CheckpointError(f"{source}: missing field {err}") from err
    except CheckpointError:
        raise
    except ValueError as err:  # our config's own validation (divisibility etc.)
        raise CheckpointError(f"{source}: {err}") from err


def _config(hf: Mapping[str, Any], arch: str, source: str) -> TimeSformerConfig | ViViTConfig:
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{source}: hidden_act={act!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    dim, heads, hidden = hf["hidden_size"], hf["num_attention_heads"], hf["intermediate_size"]
    if (hf.get("head_dim") or dim // heads) * heads != dim:
        raise CheckpointError(f"{source}: head_dim={hf['head_dim']} × {heads} heads != hidden_size={dim}")
    common = dict(
        num_classes=hf["num_labels"] if "num_labels" in hf else len(hf.get("id2label", {0: 0, 1: 1})),
        num_frames=hf["num_frames"], img_size=_square(hf["image_size"], "image_size", source),
        in_chans=hf.get("num_channels", 3), dim=dim, depth=hf["num_hidden_layers"], num_heads=heads,
        mlp_ratio=hidden / dim, qkv_bias=hf.get("qkv_bias", True), drop_rate=hf.get("hidden_dropout_prob", 0.0),
        attn_drop_rate=hf.get("attention_probs_dropout_prob", 0.0), act=ACTIVATIONS[act],
        norm_eps=hf.get("layer_norm_eps", 1e-6),
    )
    if int(dim * common["mlp_ratio"]) != hidden:
        raise CheckpointError(f"{source}: intermediate_size={hidden} is not representable as a ratio of {dim}")
    if arch == "VivitForVideoClassification":
        tubelet = list(hf.get("tubelet_size", (2, 16, 16)))
        if len(tubelet) != 3:
            raise CheckpointError(f"{source}: tubelet_size={tubelet} must have 3 entries (t, h, w)")
        return ViViTConfig(**common, model=1, tubelet_t=tubelet[0],
                           patch_size=_square(tubelet[1:], "tubelet_size[1:]", source))
    scheme = hf.get("attention_type", "divided_space_time")
    if scheme not in SCHEMES:
        raise CheckpointError(f"{source}: attention_type={scheme!r} is not one of {sorted(SCHEMES)}")
    return TimeSformerConfig(**common, scheme=SCHEMES[scheme], drop_path_rate=hf.get("drop_path_rate", 0.0),
                             patch_size=_square(hf["patch_size"], "patch_size", source), pos_resize="nearest")


def _read_weights(directory: Path) -> tuple[StateDict, str]:
    """The checkpoint's tensors (single file or shards listed by an ``*.index.json``) and the file name."""
    name = next((n for n in WEIGHT_FILES if (directory / n).is_file()), None)
    if name is None:
        raise CheckpointError(f"{directory}: no weights file; expected one of {', '.join(WEIGHT_FILES)}")
    path = directory / name
    if not name.endswith(".index.json"):
        return read_state_dict(path), str(path)
    try:
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError) as err:
        raise CheckpointError(f"{path}: not a shard index with a 'weight_map': {err}") from err
    state: StateDict = {}
    for shard in shards:
        state.update(read_state_dict(directory / shard))
    return state, str(path)


def preprocessing_from_hf(values: Mapping[str, Any], config: TimeSformerConfig | ViViTConfig,
                          source: str) -> Preprocessing:
    """Our :class:`Preprocessing` of a ``preprocessor_config.json`` (``VideoMAEImageProcessor`` /
    ``VivitImageProcessor``): pixels ``x`` in [0, 255] become ``(x * rescale_factor + offset - mean) / std``
    (``offset``: -1 when ``"offset": true``), i.e. mean ``(mean - offset) / s`` and std ``std / s`` on [0, 1]
    pixels with ``s = 255 * rescale_factor``; the short side is ``size.shortest_edge``, the crop ``crop_size``."""
    scale = 255.0 * float(values.get("rescale_factor", 1 / 255)) if values.get("do_rescale", True) else 255.0
    offset = -1.0 if values.get("offset", False) else 0.0
    mean, std = ((values.get("image_mean", [0.0] * 3), values.get("image_std", [1.0] * 3))
                 if values.get("do_normalize", True) else ([0.0] * 3, [1.0] * 3))
    if len(mean) != 3 or len(std) != 3:
        raise CheckpointError(f"{source}: image_mean / image_std need 3 values, got {mean}, {std}")
    crop = values.get("crop_size") or {}
    crop = crop.get("height", config.img_size) if isinstance(crop, Mapping) else crop
    size = values.get("size") or {}
    short = size.get("shortest_edge") if isinstance(size, Mapping) else size
    return Preprocessing(mean=tuple((m - offset) / scale for m in mean), std=tuple(s / scale for s in std),
                         img_size=int(crop), resize=int(short) if short else None, num_frames=config.num_frames,
                         stride=2 if isinstance(config, ViViTConfig) else 4)


def _is_hf(obj: Any) -> bool:
    """A ``transformers`` TimeSformer / ViViT directory (an image ViT's is for ``init_from_image``)."""
    return (isinstance(obj, Directory) and obj.config is not None and "videoformer" not in obj.config
            and obj.config.get("model_type") in ("timesformer", "vivit"))


def _convert_hf(obj: Directory, source: str, model: str | None, overrides: dict[str, Any]) -> Converted:
    config = config_from_hf(obj.config, str(obj.path / "config.json"))
    state_dict, weights = _read_weights(obj.path)
    convert = convert_vivit if isinstance(config, ViViTConfig) else convert_timesformer
    converted = convert(state_dict, config, weights)
    name = model or ("vivit_b16x2_joint" if isinstance(config, ViViTConfig) else f"timesformer_b16_{config.scheme}")
    pre_path = obj.path / "preprocessor_config.json"
    preprocessing = None
    if pre_path.is_file():
        try:
            preprocessing = preprocessing_from_hf(json.loads(pre_path.read_text()), config, str(pre_path))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise CheckpointError(f"{pre_path}: not a preprocessor config: {err}") from err
    labels = obj.config.get("id2label") or {}
    classes = [str(labels[k]) for k in sorted(labels, key=int)] if len(labels) == config.num_classes else None
    if classes and all(re.fullmatch(r"LABEL_\d+", c) for c in classes):  # transformers' placeholder names
        classes = None
    return Converted(name, dataclasses.asdict(config), converted, weights, preprocessing, classes)


HF = register_format(Format("huggingface", _is_hf, _convert_hf))
