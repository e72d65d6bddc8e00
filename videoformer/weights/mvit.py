"""MViT v1 checkpoints in the PySlowFast or torchvision (``mvit_v1_b``) key layouts -> videoformer ``MViT``.

``convert_mvit(state_dict)`` is a pure renaming (the layout is detected from the keys); ``load_mvit(source,
model)`` reads a file (``.safetensors``, or a torch pickle with ``weights_only=True``: a bare state dict or
PySlowFast's ``{"model_state": ...}``), converts it and loads it strictly into a model whose config matches the
checkpoint (e.g. ``create_model("mvit_b_16x4", pool_kernel=(3, 3, 3))`` for the released K400 16×4 weights).

What changes on the way:
- PySlowFast: separate ``attn.q / k / v`` are concatenated into our fused ``qkv`` (q | k | v rows);
  ``attn.pool_q`` / ``attn.norm_q`` become ``attn.pool_q.pool`` / ``attn.pool_q.norm``;
  ``pos_embed_class`` + ``pos_embed_spatial`` become ``pos_embed.space`` and ``pos_embed_temporal``
  ``pos_embed.time`` (a joint ``pos_embed`` goes to ``pos_embed.pos``, or ``pos_embed.space`` for a model with
  space-only embeddings); ``head.projection`` is ``head``; a 2D (image) patch filter gets a time axis of 1.
- torchvision: ``conv_proj`` -> ``patch_embed.proj``; ``pos_encoding.{class_token, class_pos, spatial_pos,
  temporal_pos}`` -> ``cls_token`` / ``pos_embed.{space, time}``; ``attn.project.0`` -> ``attn.proj``;
  ``mlp.0 / mlp.3`` -> ``mlp.fc1 / fc2``; ``project`` -> ``proj``; ``head.1`` -> ``head``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

from ..layers import JointPosEmbed
from ..models.mvit import MViT
from .common import CheckpointError, StateDict, load_checked, read_file

LAYOUTS = ("pyslowfast", "torchvision")

_RENAMES = {
    "pyslowfast": [
        (r"^(blocks\.\d+\.attn)\.pool_([qkv])\.weight$", r"\1.pool_\2.pool.weight"),
        (r"^(blocks\.\d+\.attn)\.norm_([qkv])\.(weight|bias)$", r"\1.pool_\2.norm.\3"),
        (r"^head\.projection\.(weight|bias)$", r"head.\1"),
    ],
    "torchvision": [
        (r"^conv_proj\.(weight|bias)$", r"patch_embed.proj.\1"),
        (r"^(blocks\.\d+\.attn)\.project\.0\.(weight|bias)$", r"\1.proj.\2"),
        (r"^(blocks\.\d+)\.mlp\.0\.(weight|bias)$", r"\1.mlp.fc1.\2"),
        (r"^(blocks\.\d+)\.mlp\.3\.(weight|bias)$", r"\1.mlp.fc2.\2"),
        (r"^(blocks\.\d+)\.project\.(weight|bias)$", r"\1.proj.\2"),
        (r"^head\.1\.(weight|bias)$", r"head.\1"),
    ],
}


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


def read_checkpoint(path: str | Path) -> StateDict:
    """A state dict from any file :func:`~.common.read_file` reads, unwrapping PySlowFast's
    ``{"model_state": ...}`` and the ``{"model": ...}`` of torchvision's training scripts."""
    obj = read_file(path)
    for wrapper in ("model_state", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} is not a mapping of names to tensors")
    return dict(obj)


def load_mvit(source: str | Path | Mapping[str, torch.Tensor], model: MViT) -> MViT:
    """Load a PySlowFast / torchvision MViT v1 checkpoint (file or state dict) into ``model``, strictly."""
    state = read_checkpoint(source) if isinstance(source, (str, Path)) else dict(source)
    name = str(source) if isinstance(source, (str, Path)) else "<state dict>"
    converted = convert_mvit(state, joint_pos=isinstance(model.pos_embed, JointPosEmbed))
    return load_checked(model, converted, name)
