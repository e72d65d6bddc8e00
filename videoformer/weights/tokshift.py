"""TokShift-Transformer checkpoints (VideoNetworks/TokShift-Transformer, ``.pth``) -> videoformer: the frame-wise
ViT baseline (``vit_models/modeling.py``), TokenShift (``modeling_tokshift.py``) and the MSCA authors'
``AttentionShift`` (MSCA-KV, ``modeling_attentionshift.py`` on the repository's ``refs/pull/6/head``).

The training script saves ``{"epoch", "state_dict", "best_acc1", "optimizer", "scheduler"}`` with the
``VideoNet`` state dict of a DistributedDataParallel model: keys ``module.base_model.transformer...`` and
``module.base_model.head``. The three models have the *same* keys (the shifts have no parameters), so the file
does not say which one it holds: ``load_pretrained(path, model=...)`` must name it (``vit_b16_framewise`` /
``vit_l16_framewise``, ``tokenshift_b16`` / ``tokenshift_l16``, ``msca_b16``).

What changes on the way: separate ``query`` / ``key`` / ``value`` become our fused ``qkv`` (q | k | v rows);
``attention_norm`` / ``ffn_norm`` / ``ffn`` / ``out`` / ``encoder_norm`` are ``norms.0`` / ``norm_mlp`` / ``mlp`` /
``proj`` / ``norm``; the ``Conv2d`` patch filter gets a time axis of 1. The official conventions become config
values: TokShift's first ``dim // 4`` CLS channels come from frame t+1 and the next ``dim // 4`` from t-1
(``shift_layout="fwd_back"``); AttentionShift's first ``h // 12`` K/V heads come from t+1 and the last ``h // 12``
from t-1 (``shift_layout="fwd_rest_back"``); boundary frames get zeros; the clip logits are the mean of the
per-frame logits (``VideoNet``'s ``avg`` consensus). The official models take ``(B, T, C, H, W)`` clips, ours
``(B, C, T, H, W)``: no weight depends on it. The file does not record the clip length: ``num_frames=`` (8 by
default, the 8x32 releases). Input: pixels scaled to [-1, 1] (``PIXEL_MEAN`` 127.5, ``PIXEL_STD`` 0.5), 32
frames apart, short side = crop at test time.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from ..data.preprocessing import Preprocessing
from ..models import FramewiseViTConfig, MSCAConfig, TokenShiftConfig, get_spec
from .common import (CheckpointError, Converted, Format, Rule, convert_by_rules, heads_of, model_shapes,
                     register_format, tensor_dict, vit_rules)

_PREFIXES = ("module.base_model.", "base_model.", "module.")
_ROOT = "transformer.embeddings.patch_embeddings.weight"
_BLOCK = {"norms.0": "attention_norm", "norm_mlp": "ffn_norm", "mlp.fc1": "ffn.fc1", "mlp.fc2": "ffn.fc2",
          "attns.0.proj": "attn.out"}
MODELS = {FramewiseViTConfig: "ViT", TokenShiftConfig: "TokShift", MSCAConfig: "AttentionShift (MSCA-KV)"}


def _prefix(state: Mapping[str, Any]) -> str | None:
    return next((p for p in (*_PREFIXES, "") if p + _ROOT in state), None)


def _state(obj: Any) -> Mapping[str, Any] | None:
    state = tensor_dict(obj, ("state_dict",))
    if state is None or _prefix(state) is None:
        return None
    p = _prefix(state)
    return state if p + "transformer.encoder.layer.0.attention_norm.weight" in state else None


def _rule_of(p: str):
    fixed = {"cls_token": Rule((p + "transformer.embeddings.cls_token",)),
             "pos_embed.pos": Rule((p + "transformer.embeddings.position_embeddings",)),
             "patch_embed.proj.weight": Rule((p + _ROOT,), "frame_conv"),
             "patch_embed.proj.bias": Rule((p + "transformer.embeddings.patch_embeddings.bias",))}

    return vit_rules(fixed, p + "transformer.encoder.encoder_norm", p + "head", p + "transformer.encoder.layer.{}",
                     _BLOCK, ("attn.query", "attn.key", "attn.value"))


def convert_tokshift(obj: Any, source: str, model: str | None = None,
                     overrides: Mapping[str, Any] | None = None) -> Converted:
    """A TokShift-Transformer checkpoint (or its state dict) -> :class:`Converted` for ``model``."""
    overrides = dict(overrides or {})
    state = _state(obj)
    if state is None:
        raise CheckpointError(f"{source}: not a TokShift-Transformer checkpoint")
    choices = "vit_b16_framewise / vit_l16_framewise (ViT), tokenshift_b16 / tokenshift_l16 (TokShift), msca_b16 " \
              "(AttentionShift, MSCA-KV)"
    if model is None:
        raise CheckpointError(f"{source}: a TokShift-Transformer checkpoint does not record which model it holds "
                              f"(ViT, TokShift or AttentionShift have the same keys); pass model= one of {choices}")
    spec = get_spec(model)
    if spec.config_cls not in MODELS:
        raise CheckpointError(f"{source}: {model!r} is not a model of TokShift-Transformer; use one of {choices}")
    p = _prefix(state)
    conv, pos = state[p + _ROOT], state[p + "transformer.embeddings.position_embeddings"]
    if conv.ndim != 4:
        raise CheckpointError(f"{source}: {p + _ROOT} has shape {tuple(conv.shape)}; the hybrid R50-ViT backbone is "
                              "not supported")
    dim, patch = conv.shape[0], conv.shape[-1]
    side = round((pos.shape[1] - 1) ** 0.5)
    depth = 1 + max(int(m.group(1)) for k in state
                    if (m := re.match(re.escape(p) + r"transformer\.encoder\.layer\.(\d+)\.", k)))
    hidden = state[f"{p}transformer.encoder.layer.0.ffn.fc1.weight"].shape[0]
    heads = heads_of(dim, overrides, source)
    config: dict[str, Any] = dict(
        num_classes=state[p + "head.weight"].shape[0], img_size=side * patch, in_chans=conv.shape[1],
        patch_size=patch, dim=dim, depth=depth, num_heads=heads, mlp_ratio=hidden / dim, qkv_bias=True, act="gelu",
        norm_eps=1e-6, class_token=True, readout="mean_logits",
        num_frames=int(overrides.get("num_frames", spec.defaults.get("num_frames", 8))))
    if spec.config_cls is TokenShiftConfig:  # SHIFT_DIV: 4 in every released config
        config.update(shift_layout="fwd_back", boundary="zero",
                      channels_back=overrides.get("channels_back", dim // 4),
                      channels_fwd=overrides.get("channels_fwd", dim // 4))
    elif spec.config_cls is MSCAConfig:  # SHIFT_DIV: 12 -> one head each way (ViT-B)
        config.update(variant="KV", shift_layout="fwd_rest_back", boundary="zero", msca_blocks=depth,
                      heads_back=overrides.get("heads_back", max(heads // 12, 1)),
                      heads_fwd=overrides.get("heads_fwd", max(heads // 12, 1)))
    converted = convert_by_rules(model_shapes(model, config), _rule_of(p), state, source, "TokShift-Transformer")
    pre = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, img_size=config["img_size"], num_frames=config["num_frames"],
                        stride=32)
    return Converted(model, config, converted, source, pre)


TOKSHIFT = register_format(Format("tokshift", lambda obj: _state(obj) is not None, convert_tokshift))
