"""Image ViT checkpoints -> one canonical state dict: the naming of a single-frame :class:`FramewiseViT`.

Readers for the three layouts the video papers start from (ViViT §3.4, TimeSformer §4):

- Hugging Face ``ViTModel`` / ``ViTForImageClassification`` directories (config.json + model.safetensors or
  pytorch_model.bin; separate query / key / value fused into ``qkv``);
- timm-layout state dicts (``.safetensors``, or ``.pth`` / ``.pt`` / ``.bin`` read with ``weights_only=True``);
- the original JAX ViT ``.npz`` (``Transformer/encoderblock_i/MultiHeadDotProductAttention_1/...``, the
  ImageNet-21k ViT-B/16) and its big_vision variant (``MultiHeadDotProductAttention_0``, ``LayerNorm_1``,
  ``MlpBlock_0``, top-level ``pos_embedding``, optionally scanned ``Transformer/encoderblock/`` stacks).

Canonical keys: ``cls_token`` (1, 1, D) if the ViT has one, ``patch_embed.proj.weight`` (D, C, 1, p, p) and
``.bias``, ``pos_embed.pos`` (1, P + n², D), per block ``blocks.i.norms.0``, ``blocks.i.attns.0.qkv`` (q | k | v
rows, heads contiguous), ``blocks.i.attns.0.proj``, ``blocks.i.norm_mlp``, ``blocks.i.mlp.fc1`` / ``fc2``, the
final ``norm``, and ``head`` when the checkpoint has a classifier. Layers that are not part of the backbone
are dropped: Hugging Face's ``pooler`` and the JAX ``pre_logits`` representation layer (together with the
``head`` behind it, which is meaningless without it). Everything else must map, or
:class:`CheckpointMismatchError` lists what did not.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .common import CheckpointError, CheckpointMismatchError, StateDict, check_state_dict, read_state_dict, sniff

PathLike = str | Path
Renames = list[tuple[str, str]]

# Hugging Face ViT: the file layout (``encoder.layer``) and transformers >= 5 in-memory names (``layers``).
_HF_RENAMES: Renames = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed.pos"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.", r"blocks.\1.norms.0."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.", r"blocks.\1.norm_mlp."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.", r"blocks.\1.attns.0.\2."),
    (r"^layers\.(\d+)\.attention\.(q|k|v)_proj\.", r"blocks.\1.attns.0.\2."),
    (r"^(?:encoder\.layer\.(\d+)\.attention\.output\.dense|layers\.(\d+)\.attention\.o_proj)\.",
     r"blocks.\1\2.attns.0.proj."),
    (r"^(?:encoder\.layer\.(\d+)\.intermediate\.dense|layers\.(\d+)\.mlp\.fc1)\.", r"blocks.\1\2.mlp.fc1."),
    (r"^(?:encoder\.layer\.(\d+)\.output\.dense|layers\.(\d+)\.mlp\.fc2)\.", r"blocks.\1\2.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]
_HF_DROPPED = r"^pooler\."

_TIMM_RENAMES: Renames = [
    (r"^(cls_token|norm\.|head\.|patch_embed\.proj\.)", r"\1"),
    (r"^pos_embed$", "pos_embed.pos"),
    (r"^blocks\.(\d+)\.norm1\.", r"blocks.\1.norms.0."),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm_mlp."),
    (r"^blocks\.(\d+)\.attn\.(qkv|proj)\.", r"blocks.\1.attns.0.\2."),
    (r"^blocks\.(\d+)\.mlp\.(fc1|fc2)\.", r"blocks.\1.mlp.\2."),
]

_CANONICAL_BLOCK = re.compile(r"^blocks\.\d+\.(norms|attns|norm_mlp)\.")  # timm says norm1 / attn / norm2


def _rename(state: Mapping[str, torch.Tensor], renames: Renames, source: str, dropped: str | None = None) -> StateDict:
    """Apply the first matching ``(pattern, replacement)`` to every key; keys matching none are unexpected."""
    out, unexpected = {}, []
    for key, value in state.items():
        if dropped and re.match(dropped, key):
            continue
        for pattern, repl in renames:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            unexpected.append(key)
    if unexpected:
        raise CheckpointMismatchError(source, unexpected=unexpected)
    return out


def _fuse_qkv(state: StateDict, source: str) -> StateDict:
    """``...attns.j.{q,k,v}[uery|ey|alue].{weight,bias}`` -> one ``qkv`` tensor in q | k | v order."""
    out, parts = {}, {}
    for key, value in state.items():
        m = re.match(r"^(.*\.attns\.\d+)\.(q|k|v|query|key|value)\.(weight|bias)$", key)
        if m:
            parts.setdefault((m[1], m[3]), {})[m[2][0]] = value
        else:
            out[key] = value
    for (prefix, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise CheckpointMismatchError(source, missing=[f"{prefix}.{n}.{kind}" for n in "qkv" if n not in qkv])
        out[f"{prefix}.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return out


def _conv_to_3d(state: StateDict) -> StateDict:
    """2D patch-embedding filters (D, C, p, p) -> the single-frame tubelet (D, C, 1, p, p)."""
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 4:
        state["patch_embed.proj.weight"] = w.unsqueeze(2)
    return state


def from_hf_vit(state: Mapping[str, torch.Tensor], source: str = "Hugging Face ViT") -> StateDict:
    """``ViTModel`` / ``ViTForImageClassification`` weights (``vit.`` prefix optional) -> canonical."""
    state = {re.sub(r"^vit\.", "", k): v for k, v in state.items()}
    return _conv_to_3d(_fuse_qkv(_rename(state, _HF_RENAMES, source, dropped=_HF_DROPPED), source))


def from_timm_vit(state: Mapping[str, torch.Tensor], source: str = "timm ViT") -> StateDict:
    """timm ``VisionTransformer`` weights (``blocks.i.norm1`` / ``attn.qkv`` / ...) -> canonical."""
    return _conv_to_3d(_rename(state, _TIMM_RENAMES, source))


def _unstack_scanned(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """big_vision ``scan`` checkpoints stack the blocks along axis 0: split them into ``encoderblock_i``."""
    stacked = f"{prefix}Transformer/encoderblock/"
    out = {}
    for key, value in arrays.items():
        if key.startswith(stacked):
            for i, layer in enumerate(value):
                out[f"{prefix}Transformer/encoderblock_{i}/{key[len(stacked):]}"] = layer
        else:
            out[key] = value
    return out


FlaxRule = tuple[str, str, Callable[[np.ndarray], np.ndarray]]  # (regex on the flax path, our key, conversion)


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _dense(a: np.ndarray) -> np.ndarray:
    """Flax Dense kernel (in, out) -> torch Linear weight (out, in)."""
    return a.T


def flax_conv_kernel(a: np.ndarray) -> np.ndarray:
    """Flax Conv kernel (h, w, C, D) or (t, h, w, C, D) -> torch Conv3d weight (D, C, t, h, w) (t = 1 for 2D)."""
    return (a[None] if a.ndim == 4 else a).transpose(4, 3, 0, 1, 2)


def flax_block_rules(src: str, dst: str, attns: Sequence[tuple[str, str]], ln_mlp: str, mlp: str) -> list[FlaxRule]:
    """Rules for one flax pre-norm encoder block: ``src`` a regex of the block's path with one group (its index),
    ``dst`` our block prefix (``\\1`` for the index); ``attns``: the (LayerNorm, MultiHeadDotProductAttention)
    module names that become our sublayers 0, 1, ...; ``ln_mlp`` / ``mlp``: the MLP's LayerNorm and MlpBlock."""
    rules: list[FlaxRule] = []
    for j, (ln, mha) in enumerate(attns):
        rules += [
            (src + f"{ln}/scale", dst + f"norms.{j}.weight", _same),
            (src + f"{ln}/bias", dst + f"norms.{j}.bias", _same),
            # query / key / value kernels (D, heads, hd) -> (heads*hd, D); biases (heads, hd) -> (heads*hd,)
            (src + f"{mha}/(query|key|value)/kernel", dst + rf"attns.{j}.\2.weight",
             lambda a: a.reshape(a.shape[0], -1).T),
            (src + f"{mha}/(query|key|value)/bias", dst + rf"attns.{j}.\2.bias", lambda a: a.reshape(-1)),
            # out kernel (heads, hd, D) -> (D, heads*hd)
            (src + f"{mha}/out/kernel", dst + f"attns.{j}.proj.weight", lambda a: a.reshape(-1, a.shape[-1]).T),
            (src + f"{mha}/out/bias", dst + f"attns.{j}.proj.bias", _same),
        ]
    return rules + [
        (src + f"{ln_mlp}/scale", dst + "norm_mlp.weight", _same),
        (src + f"{ln_mlp}/bias", dst + "norm_mlp.bias", _same),
        (src + f"{mlp}/Dense_0/kernel", dst + "mlp.fc1.weight", _dense),
        (src + f"{mlp}/Dense_0/bias", dst + "mlp.fc1.bias", _same),
        (src + f"{mlp}/Dense_1/kernel", dst + "mlp.fc2.weight", _dense),
        (src + f"{mlp}/Dense_1/bias", dst + "mlp.fc2.bias", _same),
    ]


def apply_flax_rules(arrays: Mapping[str, np.ndarray], rules: Sequence[FlaxRule], source: str) -> StateDict:
    """Convert every array by the first rule whose regex matches its whole path, then fuse q / k / v; paths no
    rule matches are reported as unexpected keys."""
    out, unexpected = {}, []
    for key, value in arrays.items():
        for pattern, repl, convert in rules:
            if m := re.fullmatch(pattern, key):
                out[m.expand(repl)] = torch.from_numpy(np.ascontiguousarray(convert(value)))
                break
        else:
            unexpected.append(key)
    if unexpected:
        raise CheckpointMismatchError(source, unexpected=unexpected)
    return _fuse_qkv(out, source)


def _jax_rules(big_vision: bool) -> list[FlaxRule]:
    """``(regex on the npz key, canonical key, array conversion)`` for one ViT layout."""
    mha, ln_mlp, mlp = (("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision else
                        ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"))
    return [
        ("embedding/kernel", "patch_embed.proj.weight", flax_conv_kernel),  # HWIO
        ("embedding/bias", "patch_embed.proj.bias", _same),
        ("cls", "cls_token", _same),
        ("(?:Transformer/posembed_input/)?pos_embedding", "pos_embed.pos", _same),
        ("Transformer/encoder_norm/scale", "norm.weight", _same),
        ("Transformer/encoder_norm/bias", "norm.bias", _same),
        ("head/kernel", "head.weight", _dense),
        ("head/bias", "head.bias", _same),
        *flax_block_rules(r"Transformer/encoderblock_(\d+)/", r"blocks.\1.", [("LayerNorm_0", mha)], ln_mlp, mlp),
    ]


def from_jax_vit(arrays: Mapping[str, np.ndarray], source: str = "JAX ViT") -> StateDict:
    """Original (``vision_transformer``) or big_vision ViT ``.npz`` arrays -> canonical (Flax layouts: conv
    kernels HWIO, Dense kernels (in, out), attention kernels split by head, LayerNorm ``scale``)."""
    anchors = [k for k in arrays if k.endswith("embedding/kernel")]
    if len(anchors) != 1:
        raise CheckpointError(f"{source}: expected one 'embedding/kernel' array, found {anchors or 'none'}")
    prefix = anchors[0][: -len("embedding/kernel")]  # e.g. "params/" in some big_vision files
    arrays = _unstack_scanned(dict(arrays), prefix)
    rules = _jax_rules(big_vision=any("/MlpBlock_0/" in k for k in arrays))
    has_pre_logits = any(k.startswith(f"{prefix}pre_logits/") for k in arrays)
    kept = {}
    for key, value in arrays.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        if not (name.startswith("pre_logits/") or (has_pre_logits and name.startswith("head/"))):
            kept[name] = value  # not the classifier side: the representation layer and the head that needs it
    return apply_flax_rules(kept, rules, source)


def expected_shapes(state: Mapping[str, torch.Tensor], source: str) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a complete canonical ViT with ``state``'s width, depth, MLP width, patch embedding,
    positional-embedding length and optional parts (CLS token, qkv bias, head)."""
    w = state.get("patch_embed.proj.weight")
    if w is None or w.ndim != 5:
        raise CheckpointMismatchError(source, missing=["patch_embed.proj.weight"] if w is None else [],
                                      misshaped={} if w is None else {"patch_embed.proj.weight": (
                                          ("D", "C", 1, "p", "p"), tuple(w.shape))})
    d = w.shape[0]
    depth = 1 + max((int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    hidden = state.get("blocks.0.mlp.fc1.weight", torch.empty(4 * d, d)).shape[0]
    n_pos = state.get("pos_embed.pos", torch.empty(1, 1, d)).shape[1]
    shapes = {"patch_embed.proj.weight": tuple(w.shape), "patch_embed.proj.bias": (d,),
              "pos_embed.pos": (1, n_pos, d), "norm.weight": (d,), "norm.bias": (d,)}
    if "cls_token" in state:
        shapes["cls_token"] = (1, 1, d)
    if "head.weight" in state or "head.bias" in state:
        classes = (state.get("head.weight") if "head.weight" in state else state["head.bias"]).shape[0]
        shapes |= {"head.weight": (classes, d), "head.bias": (classes,)}
    qkv_bias = any(k.endswith(".qkv.bias") for k in state)
    for i in range(depth):
        b = f"blocks.{i}"
        shapes |= {f"{b}.norms.0.weight": (d,), f"{b}.norms.0.bias": (d,), f"{b}.norm_mlp.weight": (d,),
                   f"{b}.norm_mlp.bias": (d,), f"{b}.attns.0.qkv.weight": (3 * d, d),
                   f"{b}.attns.0.proj.weight": (d, d), f"{b}.attns.0.proj.bias": (d,),
                   f"{b}.mlp.fc1.weight": (hidden, d), f"{b}.mlp.fc1.bias": (hidden,),
                   f"{b}.mlp.fc2.weight": (d, hidden), f"{b}.mlp.fc2.bias": (d,)}
        if qkv_bias:
            shapes[f"{b}.attns.0.qkv.bias"] = (3 * d,)
    return shapes


def check_canonical(state: Mapping[str, torch.Tensor], source: str) -> StateDict:
    """Raise :class:`CheckpointMismatchError` unless ``state`` is a complete canonical image ViT (square patch
    grid behind the prefix tokens included); return it as a plain dict."""
    check_state_dict(state, expected_shapes(state, source), source)
    grid = state["pos_embed.pos"].shape[1] - int("cls_token" in state)
    if grid < 1 or math.isqrt(grid) ** 2 != grid:
        raise CheckpointMismatchError(source, misshaped={"pos_embed.pos": ((1, "P + n*n", "D"),
                                                                          tuple(state["pos_embed.pos"].shape))})
    return dict(state)


def to_canonical(state: Mapping[str, torch.Tensor], source: str = "state dict") -> StateDict:
    """Detect the layout of an in-memory image ViT state dict (canonical, timm or Hugging Face) and convert."""
    keys = list(state)
    if any(_CANONICAL_BLOCK.match(k) for k in keys):
        out = dict(state)
    elif any(re.match(r"^blocks\.\d+\.(norm1|attn)\.", k) for k in keys):
        out = from_timm_vit(state, source)
    elif any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys):
        out = from_hf_vit(state, source)
    else:
        raise CheckpointError(f"{source}: not an image ViT state dict in a known layout (canonical, timm, "
                              f"Hugging Face); first keys: {keys[:5]}")
    return check_canonical(out, source)


def _read_hf_dir(path: Path) -> StateDict:
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "vit":
        raise CheckpointError(f"{path / 'config.json'}: model_type {config.get('model_type')!r} is not an image "
                              "ViT ('vit'); video checkpoints load with videoformer.load_pretrained")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return from_hf_vit(read_state_dict(path / name), str(path))
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():  # sharded checkpoint
            shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            return from_hf_vit({k: v for s in shards for k, v in read_state_dict(path / s).items()}, str(path))
    raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin next to config.json")


def _refuse_video(obj: object, name: str) -> None:
    """A video checkpoint is never read as an image ViT (its time embedding, temporal sublayers and head would be
    dropped silently): :class:`CheckpointError` naming the video format, or the training-checkpoint wrapper."""
    from .common import detect_format

    try:
        fmt = detect_format(obj, name)
    except CheckpointError:
        fmt = None
    if fmt is not None:
        raise CheckpointError(f"{name} is a video checkpoint ({fmt.name} format), not an image ViT: load it with "
                              "videoformer.load_pretrained (or model.pretrained, which fine-tunes it)")
    wrappers = sorted({"model_state", "state_dict", "cfg", "optimizer", "optimizer_state", "config"} & set(obj)
                      if isinstance(obj, Mapping) else set())
    if wrappers:
        raise CheckpointError(f"{name} is a training checkpoint (entries {wrappers}), not an image ViT state dict")


def read_image_vit(source: PathLike | Mapping[str, torch.Tensor]) -> StateDict:
    """Canonical state dict of an image ViT from a path (format detected from the contents) or an in-memory
    state dict.

    A directory with config.json is a Hugging Face checkpoint; a file is read with the library's pickle-free
    reader (:func:`read_file`, any suffix): JAX / big_vision ``.npz`` arrays, or timm-, Hugging Face- or
    canonical-layout tensors (safetensors or torch). A video checkpoint is refused (``load_pretrained``).
    """
    from .pretrained import read_source

    if isinstance(source, Mapping):
        return to_canonical(source)
    path = Path(source)
    if path.is_dir() and not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: a directory checkpoint needs config.json (Hugging Face layout)")
    if path.is_file() and sniff(path) == "unknown":
        raise CheckpointError(f"{path}: unknown image checkpoint format (expected a Hugging Face directory, or a "
                              "JAX .npz, safetensors or torch file, recognised from its contents)")
    obj, name = read_source(path)
    _refuse_video(obj, name)
    if path.is_dir():
        return check_canonical(_read_hf_dir(path), str(path))
    if sniff(path) == "npz":
        return check_canonical(from_jax_vit({k: v.numpy() for k, v in obj.items()}, str(path)), str(path))
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not an image ViT state dict (a mapping of names to tensors)")
    return to_canonical(obj, str(path))
