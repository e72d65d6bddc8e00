"""MViT v1 checkpoints -> videoformer ``MViT``: PySlowFast ``.pyth`` files (the 2021 release and the current
code) and torchvision ``mvit_v1_b`` state dicts.

``convert_mvit_checkpoint(obj, source)`` (registered as the ``mvit_pyslowfast`` / ``mvit_torchvision`` formats
of ``load_pretrained``) returns the registry model, its config, the weights in our layout and the release's
preprocessing; ``load_mvit(path)`` builds and loads the model in one call. ``convert_mvit(state_dict)`` is the
pure renaming (the layout is detected from the keys).

What changes on the way:
- PySlowFast: the 2021 release's separate ``attn.q / k / v`` are concatenated into our fused ``qkv`` (q | k | v
  rows; the current code already fuses them); ``attn.pool_q`` / ``attn.norm_q`` become ``attn.pool_q.pool`` /
  ``attn.pool_q.norm``; ``pos_embed_class`` + ``pos_embed_spatial`` become ``pos_embed.space`` and
  ``pos_embed_temporal`` ``pos_embed.time`` (a joint ``pos_embed`` goes to ``pos_embed.pos``, or
  ``pos_embed.space`` for an image model); ``head.projection`` is ``head``; a 2D (image) patch filter gets a time
  axis of 1.
- torchvision: ``conv_proj`` -> ``patch_embed.proj``; ``pos_encoding.{class_token, class_pos, spatial_pos,
  temporal_pos}`` -> ``cls_token`` / ``pos_embed.{space, time}``; ``attn.pool_q.norm_act.0`` ->
  ``attn.pool_q.norm``; ``attn.project.0`` -> ``attn.proj``; ``mlp.0 / mlp.3`` -> ``mlp.fc1 / fc2``;
  ``project`` -> ``proj``; ``head.1`` -> ``head``.

Conventions the converted config carries:
- The architecture: from the ``cfg`` a PySlowFast checkpoint carries (the YAML its run dumped: depth, widths,
  heads, Q / K/V pooling strides and kernel, cube, positional embedding, classes, frames, crop); without one
  (and for torchvision) from the weights' shapes, with the strides every released MViT v1 config uses (cube
  2×4×4, Q 1×2×2 at each stage, K/V 1×8×8 adaptive; image models: cube 1×4×4, K/V 1×4×4), which ``overrides``
  can change.
- ``pool_norm_eps``: the 2021 PySlowFast code, which trained the released checkpoints and writes separate
  q / k / v, builds its pooling LayerNorms with ``nn.LayerNorm``'s default eps 1e-5; the current code and
  torchvision use 1e-6.
- Preprocessing: PySlowFast's ``DATA.MEAN / STD`` (0.45 / 0.225), the test crop, the short side of one-crop
  testing (``TRAIN_JITTER_SCALES[0]``), frames and sampling rate; torchvision's ``mvit_v1_b``: 0.45 / 0.225,
  short side 256, crop 224, 16 frames 4 apart (7.5 fps).

MViT v2 (relative positions, residual pooling), ``POOL_FIRST`` and other options this MViT v1 does not
implement are a :class:`~.common.CheckpointError` naming them.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from ..data.preprocessing import Preprocessing
from ..layers.pooling import POOL_MODES, default_kernel
from ..models.mvit import MViT
from .common import (CheckpointError, CheckpointMismatchError, Converted, Format, StateDict,
                     load_checked, read_file, register_format)
from .pretrained import from_converted

LAYOUTS = ("pyslowfast", "torchvision")
KINETICS = dict(mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))  # PySlowFast's DATA.MEAN / STD, torchvision's
RELEASE_STRIDE = {16: 4, 32: 3, 64: 3}  # MViT-B T×τ: frames -> sampling rate of the released configs

_RENAMES = {
    "pyslowfast": [
        (r"^(blocks\.\d+\.attn)\.pool_([qkv])\.weight$", r"\1.pool_\2.pool.weight"),
        (r"^(blocks\.\d+\.attn)\.norm_([qkv])\.(weight|bias)$", r"\1.pool_\2.norm.\3"),
        (r"^head\.projection\.(weight|bias)$", r"head.\1"),
    ],
    "torchvision": [
        (r"^conv_proj\.(weight|bias)$", r"patch_embed.proj.\1"),
        (r"^(blocks\.\d+\.attn\.pool_[qkv])\.norm_act\.0\.(weight|bias)$", r"\1.norm.\2"),
        (r"^(blocks\.\d+\.attn)\.project\.0\.(weight|bias)$", r"\1.proj.\2"),
        (r"^(blocks\.\d+)\.mlp\.0\.(weight|bias)$", r"\1.mlp.fc1.\2"),
        (r"^(blocks\.\d+)\.mlp\.3\.(weight|bias)$", r"\1.mlp.fc2.\2"),
        (r"^(blocks\.\d+)\.project\.(weight|bias)$", r"\1.proj.\2"),
        (r"^head\.1\.(weight|bias)$", r"head.\1"),
    ],
}

# slowfast/config/defaults.py, for keys a dumped cfg may lack
_SLOWFAST_DEFAULTS: dict[str, dict[str, Any]] = {
    "MVIT": dict(MODE="conv", PATCH_KERNEL=[3, 7, 7], PATCH_STRIDE=[2, 4, 4], PATCH_PADDING=[2, 4, 4], PATCH_2D=False,
                 EMBED_DIM=96, NUM_HEADS=1, MLP_RATIO=4.0, QKV_BIAS=True, DEPTH=16, DIM_MUL=[], HEAD_MUL=[],
                 POOL_KV_STRIDE=None, POOL_KV_STRIDE_ADAPTIVE=None, POOL_Q_STRIDE=[], POOL_KVQ_KERNEL=None,
                 SEP_POS_EMBED=False),
    "DATA": dict(NUM_FRAMES=8, SAMPLING_RATE=8, MEAN=[0.45] * 3, STD=[0.225] * 3, TRAIN_JITTER_SCALES=[256, 320],
                 TRAIN_CROP_SIZE=224, TEST_CROP_SIZE=256, INPUT_CHANNEL_NUM=[3, 3]),
    "MODEL": dict(NUM_CLASSES=400, ARCH="slowfast"),
    "TEST": dict(NUM_SPATIAL_CROPS=3),
}
# Options of later PySlowFast MViTs (v2, reversible, ...) and the value that keeps MViT v1
_V1_VALUES = dict(POOL_FIRST=False, CLS_EMBED_ON=True, NORM_STEM=False, NORM="layernorm", REL_POS_SPATIAL=False,
                  REL_POS_TEMPORAL=False, RESIDUAL_POOLING=False, DIM_MUL_IN_ATT=False, USE_MEAN_POOLING=False,
                  USE_ABS_POS=True, USE_FIXED_SINCOS_POS=False, LAYER_SCALE_INIT_VALUE=0.0)


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"torchvision"`` (``conv_proj`` / ``pos_encoding``) or ``"pyslowfast"`` (``patch_embed``)."""
    if "conv_proj.weight" in state_dict:
        return "torchvision"
    if "patch_embed.proj.weight" in state_dict:
        return "pyslowfast"
    raise CheckpointError(f"not an MViT checkpoint in a known layout ({', '.join(LAYOUTS)}): no conv_proj.weight or "
                          f"patch_embed.proj.weight among {len(state_dict)} keys")


def _rename(key: str, layout: str) -> str:
    for pattern, repl in _RENAMES[layout]:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return key


def convert_mvit(state_dict: Mapping[str, torch.Tensor], joint_pos: bool = False) -> StateDict:
    """Rename (and fuse) a PySlowFast / torchvision MViT v1 state dict into our key layout; keys that have no
    counterpart keep their name, so :func:`~videoformer.weights.common.check_state_dict` reports them.

    ``joint_pos``: the target has a joint positional embedding (PySlowFast's non-separable ``pos_embed``).
    """
    layout, sd = detect_layout(state_dict), dict(state_dict)
    out: StateDict = {}
    if layout == "torchvision":
        if "pos_encoding.class_token" in sd:
            out["cls_token"] = sd.pop("pos_encoding.class_token").reshape(1, 1, -1)
        if "pos_encoding.spatial_pos" in sd and "pos_encoding.class_pos" in sd:
            cls, space = sd.pop("pos_encoding.class_pos"), sd.pop("pos_encoding.spatial_pos")
            out["pos_embed.space"] = torch.cat([cls[None], space])[None]  # (1, 1 + H·W, D)
        if "pos_encoding.temporal_pos" in sd:
            out["pos_embed.time"] = sd.pop("pos_encoding.temporal_pos")[None]  # (1, T, D)
    else:
        if "pos_embed_spatial" in sd and "pos_embed_class" in sd:
            out["pos_embed.space"] = torch.cat([sd.pop("pos_embed_class"), sd.pop("pos_embed_spatial")], dim=1)
        if "pos_embed_temporal" in sd:
            out["pos_embed.time"] = sd.pop("pos_embed_temporal")
        if "pos_embed" in sd:
            out["pos_embed.pos" if joint_pos else "pos_embed.space"] = sd.pop("pos_embed")
        if sd["patch_embed.proj.weight"].ndim == 4:  # PATCH_2D image models: Conv2d (D, C, k, k)
            sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].unsqueeze(2)
        for prefix in sorted({k[: -len(".q.weight")] for k in sd if re.match(r"^blocks\.\d+\.attn\.q\.weight$", k)}):
            for kind in ("weight", "bias"):
                parts = [f"{prefix}.{n}.{kind}" for n in "qkv"]
                if all(p in sd for p in parts):
                    out[f"{prefix}.qkv.{kind}"] = torch.cat([sd.pop(p) for p in parts])
    for key, value in sd.items():
        out[_rename(key, layout)] = value
    return out


def _state_of(obj: Any) -> Mapping[str, Any] | None:
    """The state dict inside PySlowFast's ``{"model_state": ...}`` / a training script's ``{"model": ...}``, or
    ``obj`` itself."""
    for wrapper in ("model_state", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            return obj[wrapper]
    return obj if isinstance(obj, Mapping) else None


def read_checkpoint(path: str | Path) -> StateDict:
    """A state dict from any file :func:`~.common.read_file` reads, unwrapping PySlowFast's
    ``{"model_state": ...}`` and the ``{"model": ...}`` of torchvision's training scripts."""
    state = _state_of(read_file(path))
    if state is None or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} is not a mapping of names to tensors")
    return dict(state)


def _joint_pos(state: Mapping[str, torch.Tensor]) -> bool:
    """A PySlowFast non-separable ``pos_embed`` is joint space-time, except for image (PATCH_2D) models."""
    return "pos_embed" in state and state["patch_embed.proj.weight"].ndim == 5


def _release_era(state: Mapping[str, torch.Tensor], cfg: Mapping[str, Any] | None) -> bool:
    """PySlowFast's 2021 code (separate q / k / v, pooling LayerNorms with eps 1e-5); the current code fuses
    ``qkv`` unless its config says ``SEPARATE_QKV``, a key the 2021 code did not have."""
    separate = any(re.match(r"^blocks\.\d+\.attn\.q\.weight$", k) for k in state)
    return separate and not ((cfg or {}).get("MVIT") or {}).get("SEPARATE_QKV", False)


def _stages(layers: list[int], depth: int, what: str, source: str) -> tuple[int, ...]:
    if layers != sorted(set(layers)) or (layers and not (0 < layers[0] and layers[-1] < depth)):
        raise CheckpointError(f"{source}: cfg {what} layers {layers} are not increasing stage starts in 1..{depth - 1}")
    bounds = [0, *layers, depth]
    return tuple(b - a for a, b in zip(bounds, bounds[1:]))


def _one(values: list[Any], default: Any, what: str, source: str) -> Any:
    if len({tuple(v) if isinstance(v, list) else v for v in values}) > 1:
        raise CheckpointError(f"{source}: cfg {what} differs between stages ({values}); this MViT uses one value")
    return tuple(values[0]) if values and isinstance(values[0], list) else values[0] if values else default


def _adaptive(first: Any, q_layers: Mapping[int, tuple[int, ...]], depth: int) -> dict[int, tuple[int, ...]]:
    """PySlowFast's ``POOL_KV_STRIDE_ADAPTIVE``: each layer's K/V stride, divided by the Q stride where Q pools."""
    out, stride = {}, tuple(first)
    for i in range(depth):
        if i in q_layers:
            stride = tuple(max(a // b, 1) for a, b in zip(stride, q_layers[i]))
        out[i] = stride
    return out


def _kv_pools(strides: Mapping[int, tuple[int, ...]], kernel: tuple[int, ...] | None, depth: int) -> list[Any]:
    """Each layer's K/V pooling (stride, kernel), None where a layer has none (no stride, or 1×1×1 both)."""
    out = []
    for i in range(depth):
        stride = strides.get(i)
        k = None if stride is None else kernel or default_kernel(stride)
        out.append(None if stride is None or max(*stride, *k) == 1 else (stride, k))
    return out


def config_from_cfg(cfg: Mapping[str, Any], source: str) -> tuple[dict[str, Any], Preprocessing]:
    """Our MViT config and the preprocessing of a PySlowFast config (the ``cfg`` YAML of a checkpoint)."""
    section = {k: {**v, **(cfg.get(k) or {})} for k, v in _SLOWFAST_DEFAULTS.items()}
    mv, data, test = section["MVIT"], section["DATA"], section["TEST"]
    if section["MODEL"]["ARCH"] != "mvit":
        raise CheckpointError(f"{source}: cfg MODEL.ARCH is {section['MODEL']['ARCH']!r}, not 'mvit'")
    bad = {f"MVIT.{k}": mv[k] for k, v in _V1_VALUES.items() if k in mv and mv[k] != v}
    bad |= {"MVIT.MODE": mv["MODE"]} if mv["MODE"] not in POOL_MODES else {}
    bad |= {"MVIT.REV.ENABLE": True} if (mv.get("REV") or {}).get("ENABLE") else {}
    bad |= {"DETECTION.ENABLE": True} if (cfg.get("DETECTION") or {}).get("ENABLE") else {}
    if bad:
        raise CheckpointError(f"{source}: cfg options this MViT v1 does not implement: {bad}")
    depth, q = mv["DEPTH"], sorted(mv["POOL_Q_STRIDE"])
    stage_depths = _stages([s[0] for s in q], depth, "POOL_Q_STRIDE", source)
    for key in ("DIM_MUL", "HEAD_MUL"):
        if sorted(m[0] for m in mv[key]) != [s[0] for s in q]:
            raise CheckpointError(f"{source}: cfg MVIT.{key} layers {[m[0] for m in mv[key]]} are not the stage "
                                  f"starts of POOL_Q_STRIDE {[s[0] for s in q]}")
    q_stride = _one([s[1:] for s in q], (1, 2, 2), "MVIT.POOL_Q_STRIDE", source)
    kernel = tuple(mv["POOL_KVQ_KERNEL"]) if mv["POOL_KVQ_KERNEL"] is not None else None
    if kernel is not None and any(k % 2 == 0 for k in kernel):
        raise CheckpointError(f"{source}: even pooling kernel {kernel} (PySlowFast pads k // 2, this MViT "
                              "(k - 1) // 2: only odd kernels match)")
    q_layers = {s[0]: tuple(s[1:]) for s in q}
    adaptive = mv["POOL_KV_STRIDE_ADAPTIVE"]
    theirs = (_adaptive(adaptive, q_layers, depth) if adaptive is not None else
              {s[0]: tuple(s[1:]) for s in mv["POOL_KV_STRIDE"] or []})
    kv_stride = tuple(adaptive) if adaptive is not None else theirs.get(0, (1, 1, 1))
    if _kv_pools(theirs, kernel, depth) != _kv_pools(_adaptive(kv_stride, q_layers, depth), kernel, depth):
        raise CheckpointError(f"{source}: cfg MVIT.POOL_KV_STRIDE {mv['POOL_KV_STRIDE']} is not a K/V stride divided "
                              "by the Q stride at each stage start, as this MViT pools K/V")
    image = bool(mv["PATCH_2D"])
    cube = [1, *mv["PATCH_KERNEL"]] if image else list(mv["PATCH_KERNEL"])
    stride = [1, *mv["PATCH_STRIDE"]] if image else list(mv["PATCH_STRIDE"])
    padding = [0, *mv["PATCH_PADDING"]] if image else list(mv["PATCH_PADDING"])
    if padding != [(k - 1) // 2 for k in cube] or stride[1] != stride[2]:
        raise CheckpointError(f"{source}: cfg patch embedding kernel {cube}, stride {stride}, padding {padding} "
                              "(this MViT pads (k - 1) // 2 with square strides)")
    multipliers = {key: _one([m[1] for m in mv[key]], 2.0, f"MVIT.{key}", source) for key in ("DIM_MUL", "HEAD_MUL")}
    num_frames = 1 if image else data["NUM_FRAMES"]
    config = dict(dim=mv["EMBED_DIM"], num_heads=mv["NUM_HEADS"], stage_depths=stage_depths, depth=depth,
                  dim_mul=float(multipliers["DIM_MUL"]), head_mul=float(multipliers["HEAD_MUL"]),
                  q_stride=q_stride, kv_stride=kv_stride, pool_kernel=kernel, pool_mode=mv["MODE"],
                  cube_kernel=tuple(cube), cube_stride_t=stride[0], patch_size=stride[1],
                  pos_embed="separable" if mv["SEP_POS_EMBED"] else "space" if image else "joint",
                  mlp_ratio=float(mv["MLP_RATIO"]), qkv_bias=bool(mv["QKV_BIAS"]), num_frames=num_frames,
                  img_size=data["TRAIN_CROP_SIZE"], num_classes=section["MODEL"]["NUM_CLASSES"],
                  in_chans=data["INPUT_CHANNEL_NUM"][0])
    crop = data["TEST_CROP_SIZE"]  # short side: ImageNet 256/224 of the crop; Kinetics one-crop testing
    short = (int(256 / 224 * crop) if image else  # TRAIN_JITTER_SCALES[0], three-crop testing the crop itself
             data["TRAIN_JITTER_SCALES"][0] if test["NUM_SPATIAL_CROPS"] == 1 else crop)
    preprocessing = Preprocessing(mean=tuple(data["MEAN"]), std=tuple(data["STD"]), img_size=crop, resize=short,
                                  num_frames=num_frames, stride=1 if image else data["SAMPLING_RATE"])
    return config, preprocessing


def config_from_weights(state: Mapping[str, torch.Tensor], source: str,
                        overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Our MViT config read from a state dict in our layout: widths, depths and heads from the shapes; the
    strides the weights cannot show from the released configs (or ``overrides``)."""
    overrides = overrides or {}
    w = state.get("patch_embed.proj.weight")
    depth = sum(1 for k in state if re.match(r"^blocks\.\d+\.norm1\.weight$", k))
    if w is None or w.ndim != 5 or not depth:
        raise CheckpointError(f"{source}: no MViT patch embedding (D, C, t, h, w) and blocks.*.norm1 to read the "
                              "architecture from")
    block = [{n: state.get(f"blocks.{i}.{n}") for n in ("norm1.weight", "mlp.fc1.weight", "mlp.fc2.weight",
                                                        "attn.pool_q.pool.weight", "attn.pool_k.pool.weight")}
             for i in range(depth)]
    missing = [f"blocks.{i}.{n}" for i, b in enumerate(block) for n in ("norm1.weight", "mlp.fc1.weight",
                                                                        "mlp.fc2.weight") if b[n] is None]
    if missing:
        raise CheckpointMismatchError(source, missing=missing)
    stage_depths, count = [], 0
    for i, b in enumerate(block):
        count += 1
        if b["mlp.fc2.weight"].shape[0] != b["norm1.weight"].shape[0] or i == depth - 1:  # a stage ends
            stage_depths.append(count)
            count = 0
    starts = [sum(stage_depths[:s]) for s in range(len(stage_depths))]
    widths = [block[s]["norm1.weight"].shape[0] for s in starts]
    pools = [b["attn.pool_k.pool.weight"] if b["attn.pool_k.pool.weight"] is not None else b["attn.pool_q.pool.weight"]
             for b in block]
    heads = [widths[n] // next((p.shape[0] for p in pools[s: s + d] if p is not None), widths[n])
             for n, (s, d) in enumerate(zip(starts, stage_depths))]
    if all(p is None for p in pools):  # max / avg pooling: nothing to read
        missing = [k for k in ("pool_mode", "num_heads", "head_mul") if k not in overrides]
        if missing:
            raise CheckpointError(f"{source}: no conv-pooling weights to read the heads from; pass {missing}")
    image = "pos_embed.time" not in state and w.shape[2] == 1
    config: dict[str, Any] = dict(dim=widths[0], num_heads=heads[0], stage_depths=tuple(stage_depths), depth=depth,
                                  dim_mul=_ratio(widths, "widths", source), head_mul=_ratio(heads, "heads", source),
                                  in_chans=w.shape[1], cube_kernel=tuple(w.shape[2:]), cube_stride_t=1 if image else 2,
                                  mlp_ratio=block[0]["mlp.fc1.weight"].shape[0] / widths[0],
                                  qkv_bias="blocks.0.attn.qkv.bias" in state, pool_mode="conv",
                                  num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0)
    kv = [tuple(b["attn.pool_k.pool.weight"].shape[2:]) for b in block if b["attn.pool_k.pool.weight"] is not None]
    q = [tuple(b["attn.pool_q.pool.weight"].shape[2:]) for b in block if b["attn.pool_q.pool.weight"] is not None]
    if len(set(kv + q)) == 1 and len(kv) == depth:  # one kernel for every pool, stride-1 K/V pools included
        config |= dict(pool_kernel=kv[0], kv_stride=(1, 4, 4) if image else (1, 8, 8), q_stride=(1, 2, 2))
    elif kv or q:  # k = s + 1 kernels: the strides are in them
        first = block[0]["attn.pool_k.pool.weight"]
        config |= dict(pool_kernel=None, kv_stride=_stride(tuple(first.shape[2:])) if first is not None else (1, 1, 1),
                       q_stride=_stride(q[0]) if q else (1, 2, 2))
    patch, stride_t = overrides.get("patch_size", 4), overrides.get("cube_stride_t", config["cube_stride_t"])
    if "pos_embed.time" in state:
        config |= dict(pos_embed="separable", num_frames=state["pos_embed.time"].shape[1] * stride_t,
                       img_size=_side(state["pos_embed.space"].shape[1] - 1, "pos_embed.space", source) * patch)
    elif "pos_embed.pos" in state:
        size = overrides.get("img_size", 224)
        t, rem = divmod(state["pos_embed.pos"].shape[1] - 1, (size // patch) ** 2)
        if rem or not t:
            raise CheckpointError(f"{source}: a joint positional embedding of {state['pos_embed.pos'].shape[1] - 1} "
                                  f"tokens is not T×{size // patch}²: pass the checkpoint's img_size=")
        config |= dict(pos_embed="joint", num_frames=t * stride_t, img_size=size)
    elif "pos_embed.space" in state:
        config |= dict(pos_embed="space", num_frames=1 if image else overrides.get("num_frames", 16),
                       img_size=_side(state["pos_embed.space"].shape[1] - 1, "pos_embed.space", source) * patch)
    else:
        config |= dict(pos_embed="none")
    return config


def _ratio(values: list[int], what: str, source: str) -> float:
    ratios = {b / a for a, b in zip(values, values[1:])}
    if len(ratios) > 1:
        raise CheckpointError(f"{source}: stage {what} {values} do not grow by one factor; this MViT multiplies them "
                              "by dim_mul / head_mul at each stage")
    return ratios.pop() if ratios else 2.0


def _stride(kernel: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(k - 1 if k > 1 else 1 for k in kernel)  # k = s + 1 on strided axes


def _side(tokens: int, what: str, source: str) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise CheckpointError(f"{source}: {what} holds {tokens} grid tokens, not a square")
    return side


def _cfg(obj: Any, source: str) -> Mapping[str, Any] | None:
    """The config a PySlowFast checkpoint carries (``cfg``: the YAML dump of its run), parsed."""
    text = obj.get("cfg") if isinstance(obj, Mapping) else None
    if not isinstance(text, str):
        return None
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CheckpointError(f"{source}: its cfg is not readable YAML ({err})") from err
    return cfg if isinstance(cfg, Mapping) else None


def convert_mvit_checkpoint(obj: Any, source: str, model: str | None = None,
                            overrides: Mapping[str, Any] | None = None) -> Converted:
    """A PySlowFast (2021 or current) or torchvision MViT v1 checkpoint, as :func:`~.common.read_file` returns
    it -> registry name, config (``overrides`` win), state dict in our layout, preprocessing."""
    overrides = dict(overrides or {})
    state = _state_of(obj)
    if state is None or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: not an MViT state dict (a mapping of names to tensors, possibly under "
                              "'model_state' or 'model')")
    layout = detect_layout(state)
    v2 = sorted(k for k in state if ".rel_pos_" in k)
    if v2:
        raise CheckpointError(f"{source}: an MViT v2 checkpoint (relative positional embeddings {v2[:3]}); "
                              "videoformer implements MViT v1")
    cfg = _cfg(obj, source) if layout == "pyslowfast" else None
    converted = convert_mvit(state, joint_pos=_joint_pos(state))
    if cfg is not None:
        config, preprocessing = config_from_cfg(cfg, source)
    else:
        config = config_from_weights(converted, source, overrides)
        frames, size = config["num_frames"], config["img_size"]
        preprocessing = (Preprocessing(img_size=size, resize=round(size * 256 / 224), num_frames=1, stride=1)
                         if frames == 1 else Preprocessing(**KINETICS, img_size=size, resize=round(size * 256 / 224),
                                                           num_frames=frames, stride=RELEASE_STRIDE.get(frames, 4)))
    config["pool_norm_eps"] = 1e-5 if layout == "pyslowfast" and _release_era(state, cfg) else 1e-6
    config |= overrides
    name = model or ("mvit_b16_image" if config["num_frames"] == 1 else "mvit_b_16x4")
    return Converted(name, config, converted, source, preprocessing)


def _detect(layout: str) -> Any:
    def detect(obj: Any) -> bool:
        state = _state_of(obj)
        if state is None:
            return False
        if layout == "torchvision":
            return "conv_proj.weight" in state and "pos_encoding.class_token" in state
        return ("patch_embed.proj.weight" in state and "head.projection.weight" in state
                and "blocks.0.attn.proj.weight" in state)
    return detect


MVIT_FORMATS = {layout: register_format(Format(f"mvit_{layout}", _detect(layout), convert_mvit_checkpoint))
                for layout in LAYOUTS}


def load_mvit(source: str | Path | Mapping[str, Any], model: MViT | str | None = None, **overrides: Any) -> MViT:
    """A PySlowFast / torchvision MViT v1 checkpoint (file, or its contents) -> our ``MViT`` with the weights
    loaded strictly, in eval mode. ``model``: a registry name, or an ``MViT`` to load into (its config must then
    match the checkpoint, which is checked key by key and shape by shape, and for the pooling LayerNorms' eps)."""
    obj = read_file(source) if isinstance(source, (str, Path)) else source
    name = str(source) if isinstance(source, (str, Path)) else "<state dict>"
    if not isinstance(model, MViT):
        return from_converted(convert_mvit_checkpoint(obj, name, model, overrides))
    state = _state_of(obj)
    if state is None:
        raise CheckpointError(f"{name}: not an MViT state dict")
    converted = convert_mvit(state, joint_pos=model.cfg.pos_embed == "joint")
    eps = 1e-5 if detect_layout(state) == "pyslowfast" and _release_era(state, _cfg(obj, name)) else 1e-6
    if model.cfg.pool_norm_eps != eps:
        raise CheckpointError(f"{name}: its pooling LayerNorms use eps {eps:g}, the model's "
                              f"{model.cfg.pool_norm_eps:g} (build it with pool_norm_eps={eps:g}, or call load_mvit "
                              "without a model)")
    return load_checked(model, converted, name)
