"""Scenic ViViT checkpoints (google-research/scenic, ``projects/vivit``: flax msgpack) -> videoformer ``ViViT``.

:func:`~.common.read_file` decodes the file without JAX or flax. The parameters sit under ``optimizer`` ->
``target`` in the released files (flax.optim train states) and under ``params`` in newer Scenic train states.
Which ViViT it is comes from the parameter names: ``SpatialTransformer`` (+ ``TemporalTransformer``) is model 2,
the factorised encoder (without a temporal transformer: the spatial-only baseline, Lt = 0);
``MultiHeadDotProductAttention_time`` / ``_space`` blocks are model 3; one ``MultiHeadDotProductAttention_0``
per block is model 1 or model 4, which have the same parameters: a file without a ``cls`` token is read as
model 1 with global average pooling unless the caller names a model-4 architecture (``vivit_b16x2_fdp``).

Scenic's conventions, which the converted config carries (our registry defaults stay the paper's reading):

- GELU is flax's default tanh approximation: ``act="gelu_tanh"``;
- model 3 attends over time, then space (``attention_order="time_space"``, which the file does not record:
  ``order="st"`` overrides it); model 4's ``factorized_dot_product_attention`` gives the first half of the
  heads to time: ``order="ts"`` for both;
- ``classifier`` is ``token`` (a ``cls`` parameter; model 2: ``cls_SpatialTransformer`` and
  ``cls_TemporalTransformer``) or ``gap`` (mean of the final tokens), both allowed for models 1 and 2;
- ``patches.size`` is (h, w, t) and the tubelet kernel (t, h, w, C, D) (a 2D (h, w, C, D) kernel is uniform
  frame sampling, ``tubelet_t=1``); Dense kernels are (in, out), attention kernels split by head;
- input: pixels in [-1, 1] (``zero_centering``), short side 256 and a 224² crop (SSv2: 288 / 256), 32 frames
  2 apart (Kinetics; Epic-Kitchens and SSv2 sample every frame).

A checkpoint does not say its clip size for models 1, 3 and 4 (the positional embedding is one ``t·h·w``
sequence): 224² is assumed unless ``img_size`` or ``num_frames`` is given. Not supported, with a
:class:`~.common.CheckpointError` saying so: a ``pre_logits`` representation layer, positional embeddings other
than learned ones, and model-2 encoders of different widths.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..data.preprocessing import Preprocessing
from ..models import BACKBONES, ViViT, ViViTConfig, get_spec, list_models
from .common import CheckpointError, Converted, Format, read_file, register_format
from .image import FlaxRule, _dense, _same, apply_flax_rules, flax_block_rules, flax_conv_kernel
from .pretrained import from_converted

KINDS = {1: "joint", 2: "fe", 3: "fsa", 4: "fdp"}  # ViViT model -> registry suffix
SCENIC = dict(act="gelu_tanh", norm_eps=1e-6, qkv_bias=True)
PREPROCESSING = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), stride=2, sampler="dense")  # [-1, 1] input
_BLOCK = "encoderblock_(\\d+)/"


def scenic_params(obj: Any) -> Mapping[str, Any] | None:
    """The parameter tree of a Scenic checkpoint (``optimizer.target``, its older ``optimizer.target.params``,
    ``params``, or the tree itself), or None when ``obj`` is not one."""
    if not isinstance(obj, Mapping):
        return None
    for path in (("optimizer", "target"), ("optimizer", "target", "params"), ("params",), ()):
        tree: Any = obj
        for key in path:
            tree = tree.get(key) if isinstance(tree, Mapping) else None
        if isinstance(tree, Mapping) and "embedding" in tree and ({"Transformer", "SpatialTransformer"} & set(tree)):
            return tree
    return None


def _flatten(tree: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, np.ndarray]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}`` as NumPy arrays (bfloat16 as float32)."""
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= _flatten(value, source, path + "/")
        elif isinstance(value, torch.Tensor):
            out[path] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
        elif isinstance(value, np.ndarray):  # an in-memory tree (flax's own msgpack_restore gives NumPy)
            out[path] = value
        else:
            raise CheckpointError(f"{source}: parameter {path} is a {type(value).__name__}, not an array")
    return out


def _depth(arrays: Mapping[str, np.ndarray], encoder: str) -> int:
    return len({m[1] for k in arrays if (m := re.match(f"{encoder}/{_BLOCK}", k))})


def _heads_and_mlp(arrays: Mapping[str, np.ndarray], block: str, mha: str, mlp: str) -> tuple[int, int]:
    """Heads (query kernel ``(D, heads, hd)``) and MLP width (first Dense kernel ``(D, hidden)``) of a block."""
    return arrays[f"{block}/{mha}/query/kernel"].shape[1], arrays[f"{block}/{mlp}/Dense_0/kernel"].shape[1]


def _norm(src: str, dst: str) -> list[FlaxRule]:
    return [(f"{src}/scale", f"{dst}.weight", _same), (f"{src}/bias", f"{dst}.bias", _same)]


def _encoder(src: str, blocks: str, pos: str, norm: str, attns: list[tuple[str, str]], ln_mlp: str,
             mlp: str) -> list[FlaxRule]:
    """One Scenic ``Encoder``: learned positional embedding, blocks, ``encoder_norm``."""
    return [(f"{src}/posembed_input/pos_embedding", f"{pos}.pos", _same), *_norm(f"{src}/encoder_norm", norm),
            *flax_block_rules(f"{src}/{_BLOCK}", f"{blocks}.\\1.", attns, ln_mlp, mlp)]


def _requested_model(model: str | None, source: str) -> int | None:
    """The ViViT model number of a registry name the caller insists on."""
    if model is None:
        return None
    spec = get_spec(model)
    if spec.config_cls is not ViViTConfig:
        raise CheckpointError(f"{source} is a Scenic ViViT checkpoint; {model!r} is not a ViViT architecture")
    return spec.config().model


def _model_kind(arrays: Mapping[str, np.ndarray], requested: int | None, source: str) -> int:
    if any(k.startswith("SpatialTransformer/") for k in arrays):
        kind = 2
    elif any("/MultiHeadDotProductAttention_time/" in k for k in arrays):
        kind = 3
    elif requested == 4 and "cls" not in arrays:
        kind = 4
    else:
        kind = 1
    if requested is not None and requested != kind:
        raise CheckpointError(f"{source} holds a ViViT model {kind} ({KINDS[kind]}), not the requested model "
                              f"{requested}" + (" (model 4 has no cls token)" if requested == 4 else ""))
    return kind


def _grid(n_tokens: int, patch: int, tubelet: int, overrides: Mapping[str, Any], source: str) -> tuple[int, int]:
    """``(num_frames, img_size)`` of a joint ``t·h·w`` positional embedding of ``n_tokens`` grid tokens."""
    if "img_size" in overrides or "num_frames" not in overrides:
        n = overrides.get("img_size", 224) // patch
        nt = n_tokens // (n * n) if n else 0
    else:
        nt = overrides["num_frames"] // tubelet
        n = math.isqrt(n_tokens // nt) if nt else 0
    if nt < 1 or nt * n * n != n_tokens:
        given = next((f"{k}={overrides[k]}" for k in ("img_size", "num_frames") if k in overrides), "img_size=224")
        raise CheckpointError(f"{source}: the positional embedding's {n_tokens} grid tokens are not t·h·w tokens "
                              f"of clips with {given}; pass the checkpoint's img_size= or num_frames=")
    return nt * tubelet, n * patch


def _registry_name(kind: int, dim: int, depth: int, heads: int, patch: int, tubelet: int) -> str:
    """The registered name of this ViViT if there is one (``vivit_l16x2_fe``), else the base model of its kind."""
    size = next((k for k, b in BACKBONES.items() if b == dict(dim=dim, depth=depth, num_heads=heads)), "")
    name = f"vivit_{size}{patch}x{tubelet}_{KINDS[kind]}"
    return name if name in list_models() else f"vivit_b16x2_{KINDS[kind]}"


def convert_scenic_vivit(obj: Any, source: str, model: str | None = None,
                         overrides: Mapping[str, Any] | None = None) -> Converted:
    """A Scenic ViViT checkpoint (as :func:`~.common.read_file` returns it) -> registry name, config with
    Scenic's conventions (``overrides`` win), state dict in our layout and preprocessing."""
    overrides = dict(overrides or {})
    params = scenic_params(obj)
    if params is None:
        found = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{source}: not a Scenic ViViT checkpoint (no parameters with 'embedding' and "
                              f"'Transformer' / 'SpatialTransformer' under optimizer.target or params); found {found}")
    arrays = _flatten(params, source)
    if any(k.startswith("pre_logits/") for k in arrays):
        raise CheckpointError(f"{source}: Scenic ViViT with a pre_logits representation layer "
                              "(model.representation_size) is not supported")
    kind = _model_kind(arrays, _requested_model(model, source), source)
    encoder = "SpatialTransformer" if kind == 2 else "Transformer"
    if f"{encoder}/posembed_input/pos_embedding" not in arrays:
        raise CheckpointError(f"{source}: no {encoder}/posembed_input/pos_embedding: only learned positional "
                              "embeddings (Scenic's positional_embedding='learned_1d') are supported")
    kernel = arrays.get("embedding/kernel")
    if kernel is None or kernel.ndim not in (4, 5) or kernel.shape[-4] != kernel.shape[-3]:
        raise CheckpointError(f"{source}: embedding/kernel of shape {None if kernel is None else kernel.shape} is "
                              "not a (t,) h, w, C, D tubelet kernel with square patches")
    tubelet, patch, in_chans, dim = (1 if kernel.ndim == 4 else kernel.shape[0]), *kernel.shape[-3:]
    attn = {3: ("MultiHeadDotProductAttention_time", "MlpBlock")}.get(kind, ("MultiHeadDotProductAttention_0",
                                                                          "MlpBlock_0"))
    heads, hidden = _heads_and_mlp(arrays, f"{encoder}/encoderblock_0", *attn)
    config: dict[str, Any] = dict(SCENIC, model=kind, dim=dim, depth=_depth(arrays, encoder), num_heads=heads,
                                  mlp_ratio=hidden / dim, patch_size=patch, tubelet_t=tubelet, in_chans=in_chans,
                                  num_classes=arrays["output_projection/kernel"].shape[1]
                                  if "output_projection/kernel" in arrays else 0)
    pos_len = arrays[f"{encoder}/posembed_input/pos_embedding"].shape[1]
    rules: list[FlaxRule] = [("embedding/kernel", "patch_embed.proj.weight", flax_conv_kernel),
                             ("embedding/bias", "patch_embed.proj.bias", _same),
                             ("output_projection/kernel", "head.weight", _dense),
                             ("output_projection/bias", "head.bias", _same)]
    if kind == 2:
        token = "cls_SpatialTransformer" in arrays
        n = math.isqrt(pos_len - token)
        temporal = _depth(arrays, "TemporalTransformer")
        config |= dict(spatial_pool="token" if token else "avg", temporal_depth=temporal, img_size=n * patch,
                       classifier="token" if "cls_TemporalTransformer" in arrays or not temporal else "gap")
        if n * n != pos_len - token:
            raise CheckpointError(f"{source}: spatial positional embedding of {pos_len - token} tokens is not square")
        if temporal:
            if _heads_and_mlp(arrays, "TemporalTransformer/encoderblock_0", *attn) != (heads, hidden):
                raise CheckpointError(f"{source}: the temporal transformer's heads / MLP width differ from the "
                                      "spatial one's; videoformer's ViViT model 2 shares them")
            t_len = arrays["TemporalTransformer/posembed_input/pos_embedding"].shape[1]
            config["num_frames"] = (t_len - (config["classifier"] == "token")) * tubelet
            rules += _encoder("TemporalTransformer", "temporal_blocks", "temporal_pos_embed", "norm", [
                ("LayerNorm_0", attn[0])], "LayerNorm_1", attn[1])
        else:
            config["num_frames"] = overrides.get("num_frames", 32)
        rules += [("cls_SpatialTransformer", "cls_token", _same), ("cls_TemporalTransformer", "temporal_cls_token",
                                                                    _same)]
        rules += _encoder("SpatialTransformer", "blocks", "pos_embed", "norm_spatial", [
            ("LayerNorm_0", attn[0])], "LayerNorm_1", attn[1])
    else:
        token = "cls" in arrays
        if token and kind == 3:
            raise CheckpointError(f"{source}: a cls token in a factorised self-attention ViViT (model 3), which "
                                  "Scenic builds with the 'gap' classifier only")
        config["num_frames"], config["img_size"] = _grid(pos_len - token, patch, tubelet, overrides, source)
        config["classifier"] = "token" if token else "gap"
        if kind in (3, 4):
            config["order"] = overrides.get("order", "ts")
        if kind == 3:
            sublayers = [(f"LayerNorm_{a}", f"MultiHeadDotProductAttention_{a}") for a in ("time", "space")]
            blocks = _encoder("Transformer", "blocks", "pos_embed", "norm",
                              sublayers if config["order"] == "ts" else sublayers[::-1], "LayerNorm_mlp", "MlpBlock")
        else:
            blocks = _encoder("Transformer", "blocks", "pos_embed", "norm", [("LayerNorm_0", attn[0])],
                              "LayerNorm_1", attn[1])
        rules += [("cls", "cls_token", _same), *blocks]
    state = apply_flax_rules(arrays, rules, source)
    name = model or _registry_name(kind, dim, config["depth"], heads, patch, tubelet)
    config |= overrides
    size = config["img_size"]
    preprocessing = Preprocessing(img_size=size, resize=size + 32, num_frames=config["num_frames"], **PREPROCESSING)
    return Converted(name, config, state, source, preprocessing)


def detect_scenic_vivit(obj: Any) -> bool:
    return scenic_params(obj) is not None


SCENIC_VIVIT = register_format(Format("scenic_vivit", detect_scenic_vivit, convert_scenic_vivit))


def load_scenic_vivit(path: str | Path, model: str | None = None, **overrides: Any) -> ViViT:
    """A Scenic ViViT checkpoint file -> our ``ViViT`` with Scenic's conventions, weights loaded strictly, in eval
    mode. ``model``: a registry name (needed for model 4); ``overrides``: config fields (``img_size``,
    ``num_frames`` of the checkpoint when not 224², ``order``)."""
    return from_converted(convert_scenic_vivit(read_file(path), str(path), model, overrides))
