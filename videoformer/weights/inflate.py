"""Initialise any videoformer video model from an image ViT checkpoint (ViViT §3.4).

- Positional embeddings: the image grid is resampled in space to the model's patch grid
  (:func:`~videoformer.layers.resample`) and "repeated" over time, so every token with the same spatial index
  starts with the same embedding. Separable embeddings take the image embedding as ``space`` and zeros as
  ``time`` (the same sum). A CLS embedding is kept when both sides have a CLS token, dropped when only the
  image has one, and left as the model's own when only the model has one.
- Tubelet filters E (D, C, t, p, p) from the 2D filter: "inflation" replicates it over t and divides by t
  (Eq. 8); "central frame" puts it at ``floor(t/2)`` and zeros elsewhere (Eq. 9).
- Attention sublayers follow the init role of their :class:`~videoformer.layers.spec.Sublayer` spec:
  ``"zero_output"`` (ViViT model 3's temporal MSA) gets the pretrained ``qkv`` and a zero output projection,
  so Eq. 5 is a residual connection at initialisation, as §3.4 asks, and yet trains (see below);
  ``"added"`` (TimeSformer's sublayers with the extra ``fc``: divided's temporal attention, local-global's
  local attention, axial's time and width attention) copies the pretrained MSA and zeroes its ``fc``, as the
  official code does; ``"pretrained"`` (ViViT model 4's single attention too) takes ``qkv`` / ``proj`` as they
  are. ViViT model 2's temporal encoder (``temporal_*`` and the final ``norm``) keeps its random
  initialisation: the image's final norm goes to the norm after the image blocks, ``model.image_norm``.
  The LayerNorm before every sublayer copies the image block's ``norm1``.
- The classifier head stays the model's own unless ``load_head=True`` (then its shape must match).

Why not all zeros, as §3.4 literally says: an all-zero MSA is a stationary point -- its values are zero and so
is the ``proj.weight`` the gradient flows back through, hence ``qkv`` and ``proj.weight`` receive exactly zero
gradient and only ``proj.bias`` would ever train. Zeroing the output projection alone gives the same function
at initialisation with non-zero gradients. ``zero_new=False`` copies the whole pretrained MSA instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping

import torch
from einops import repeat
from torch import nn

from ..layers import JointPosEmbed, SeparablePosEmbed, resample
from ..models.base import VideoModel
from ..models.mmvit import MODALITIES, MMViT, mv_embedding_from_rgb
from .common import CheckpointError, CheckpointMismatchError, StateDict, load_checked
from .image import read_image_vit

TubeletInit = Literal["central", "inflate"]


def inflate_tubelet(weight: torch.Tensor, t: int, mode: TubeletInit) -> torch.Tensor:
    """2D patch filter (D, C, 1, p, p) -> tubelet filter (D, C, t, p, p): Eq. 8 (``"inflate"``: replicate,
    divide by t) or Eq. 9 (``"central"``: zeros except frame ``floor(t/2)``)."""
    if mode == "inflate":
        return repeat(weight[:, :, 0], "d c p q -> d c t p q", t=t) / t
    if mode == "central":
        out = weight.new_zeros(weight.shape[0], weight.shape[1], t, *weight.shape[3:])
        out[:, :, t // 2] = weight[:, :, 0]
        return out
    raise ValueError(f"tubelet_init must be 'central' or 'inflate', got {mode!r}")


class _Transfer:
    """Builds the video state dict from the image one, recording missing, used and misshaped keys."""

    def __init__(self, image: StateDict, target: StateDict) -> None:
        self.image, self.out = image, dict(target)
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.misshaped: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def get(self, key: str) -> torch.Tensor | None:
        if key not in self.image:
            self.missing.append(key)
            return None
        self.used.add(key)
        return self.image[key]

    def put(self, key: str, value: torch.Tensor | None) -> None:
        if value is None:
            return
        if value.shape != self.out[key].shape:
            self.misshaped[key] = (tuple(self.out[key].shape), tuple(value.shape))
            return
        self.out[key] = value.to(self.out[key].dtype)

    def copy(self, dst: str, src: str) -> None:
        self.put(dst, self.get(src))


def _pos_embed(tr: _Transfer, name: str, module: nn.Module) -> None:
    """Image embedding -> ``module`` (Joint: repeated over t; Separable: space, zero time)."""
    pos = tr.get("pos_embed.pos")
    if pos is None:
        return
    has_cls = "cls_token" in tr.image
    body, n = pos[:, int(has_cls):], round((pos.shape[1] - int(has_cls)) ** 0.5)
    grid = module.grid
    space = resample(body, (n, n), (grid.h, grid.w))  # (1, h*w, D)
    own = tr.out[f"{name}.space" if isinstance(module, SeparablePosEmbed) else f"{name}.pos"]
    prefix = pos[:, :1] if has_cls else own[:, :1]
    prefix = prefix[:, : grid.prefix]  # dropped when the model has no CLS token
    if isinstance(module, SeparablePosEmbed):
        tr.put(f"{name}.space", torch.cat([prefix, space], dim=1))
        if module.time is not None:
            tr.put(f"{name}.time", torch.zeros_like(tr.out[f"{name}.time"]))
    elif isinstance(module, JointPosEmbed):
        tr.put(f"{name}.pos", torch.cat([prefix, repeat(space, "1 n d -> 1 (t n) d", t=grid.t)], dim=1))
    else:
        raise CheckpointError(f"cannot initialise positional embedding {name} of type {type(module).__name__}")


def _blocks(tr: _Transfer, blocks: nn.ModuleList, zero_new: bool) -> None:
    """Every image block ``i`` -> video block ``i``: each sublayer from the image MSA as its spec's init role
    says (:data:`~videoformer.layers.spec.InitRole`), its LayerNorm from the image ``norm1``, MLP and its
    LayerNorm as they are; an extra ``fc`` starts at zero (``zero_new``)."""
    for i, block in enumerate(blocks):
        b = f"blocks.{i}"
        for j, (spec, attn) in enumerate(zip(block.specs, block.attns)):
            for p in ("weight", "bias"):
                tr.copy(f"{b}.norms.{j}.{p}", f"{b}.norms.0.{p}")
            if spec.init == "value_only":  # the value rows of the image qkv
                for p, _ in attn.v.named_parameters():
                    qkv = tr.get(f"{b}.attns.0.qkv.{p}")
                    tr.put(f"{b}.attns.{j}.v.{p}", None if qkv is None else qkv.chunk(3, dim=0)[2])
            names = [f"{layer}.{p}" for layer in ("qkv", "proj") if hasattr(attn, layer)
                     for p, _ in getattr(attn, layer).named_parameters()]
            for name in names:
                value = tr.get(f"{b}.attns.0.{name}")
                zero = zero_new and spec.init == "zero_output" and name.startswith("proj.") and value is not None
                tr.put(f"{b}.attns.{j}.{name}", torch.zeros_like(value) if zero else value)
            if getattr(attn, "fc", None) is not None and zero_new:
                for p in ("weight", "bias"):
                    tr.put(f"{b}.attns.{j}.fc.{p}", torch.zeros_like(tr.out[f"{b}.attns.{j}.fc.{p}"]))
        for key in [k for k in tr.out if k.startswith((f"{b}.norm_mlp.", f"{b}.mlp."))]:
            tr.copy(key, key)


def _finish(tr: _Transfer, model: VideoModel, load_head: bool, source: str) -> StateDict:
    """The image's final norm into the norm after the model's image-ViT blocks (``model.image_norm``), the
    head if asked, and :class:`CheckpointMismatchError` for anything missing, left over or misshaped."""
    for p in ("weight", "bias"):
        tr.copy(f"{model.image_norm}.{p}", f"norm.{p}")
    if load_head:
        for p in ("weight", "bias"):
            if f"head.{p}" not in tr.out:
                raise CheckpointError(f"load_head=True but {type(model).__name__} has no classifier (num_classes=0)")
            tr.copy(f"head.{p}", f"head.{p}")
    else:
        tr.used |= {"head.weight", "head.bias"}
    unexpected = sorted(set(tr.image) - tr.used)
    if tr.missing or unexpected or tr.misshaped:
        raise CheckpointMismatchError(source, tr.missing, unexpected, tr.misshaped)
    return tr.out


def image_to_video_state_dict(
    model: VideoModel,
    image: Mapping[str, torch.Tensor],
    tubelet_init: TubeletInit = "central",
    zero_new: bool = True,
    load_head: bool = False,
    source: str = "image ViT",
) -> StateDict:
    """The full state dict of ``model`` initialised from the canonical image ViT ``image`` (ViViT §3.4);
    parameters the image lacks by design keep ``model``'s own values. Raises
    :class:`CheckpointMismatchError` listing image keys that are missing or left over, and wrong shapes."""
    for attr in ("patch_embed", "pos_embed", "blocks"):
        if not hasattr(model, attr):
            raise CheckpointError(f"{type(model).__name__} has no {attr}: not a ViT-based videoformer model")
    tr = _Transfer(dict(image), model.state_dict())
    embed = model.patch_embed
    weight = tr.get("patch_embed.proj.weight")
    if weight is not None and weight.ndim == 5 and weight.shape[2] == 1:
        weight = inflate_tubelet(weight, embed.tubelet[0], tubelet_init)
    tr.put("patch_embed.proj.weight", weight)
    tr.copy("patch_embed.proj.bias", "patch_embed.proj.bias")
    if getattr(model, "cls_token", None) is not None and "cls_token" in tr.image:
        tr.copy("cls_token", "cls_token")
    tr.used.add("cls_token")  # dropped when the model has none (ViViT model 3 / 4, GAP models)
    _pos_embed(tr, "pos_embed", model.pos_embed)
    _blocks(tr, model.blocks, zero_new)
    return _finish(tr, model, load_head, source)


def init_from_image(
    model: VideoModel,
    path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
    tubelet_init: TubeletInit = "central",
    zero_new: bool = True,
    load_head: bool = False,
) -> VideoModel:
    """Load an image ViT (Hugging Face dir, timm .safetensors / .pth, JAX .npz, or a state dict) into any
    videoformer video model following ViViT §3.4 (see the module docstring); returns ``model``.

    ``tubelet_init``: ``"central"`` (Eq. 9) or ``"inflate"`` (Eq. 8) for tubelets with t > 1.
    ``zero_new``: start the added sublayers as no-ops (model 3's temporal MSA all zeros, TimeSformer's extra
    ``fc`` zeroed); ``False`` copies the pretrained MSA into model 3's temporal MSA and keeps TimeSformer's
    ``fc`` random. ``load_head``: also copy the image classifier (shapes must match).
    """
    if tubelet_init not in ("central", "inflate"):
        raise ValueError(f"tubelet_init must be 'central' or 'inflate', got {tubelet_init!r}")
    source = "state dict" if isinstance(path_or_state_dict, Mapping) else str(path_or_state_dict)
    image = read_image_vit(path_or_state_dict)
    state = image_to_video_state_dict(model, image, tubelet_init, zero_new, load_head, source)
    return load_checked(model, state, source)


def init_mmvit_from_image(model: MMViT, path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
                          zero_new: bool = True) -> MMViT:
    """Initialise MM-ViT from an image ViT (any format :func:`~videoformer.weights.read_image_vit` reads).

    - ``E_I`` and ``E_R`` take the pretrained patch embedding; ``E_M`` (2 channels) the mean of its RGB
      filters on both channels (:func:`~videoformer.models.mmvit.mv_embedding_from_rgb`); ``E_A`` and the audio
      time embedding keep their initialisation. Each visual modality's space embedding is the resampled image
      embedding, its time embedding zero; the CLS token is the image CLS token plus the image's CLS position
      embedding.
    - Every sublayer as its init role says (:func:`_blocks`): the image MSA (shift-merge: its value rows), the
      LayerNorm before it the image ``norm1``; the extra ``fc`` of the added sublayers zeroed (``zero_new``),
      so each is a no-op at initialisation, as in TimeSformer. IV's convolutions start as identities.
    - MLPs, their LayerNorms and the final norm are copied; the classifier stays the model's own.
    """
    source = "state dict" if isinstance(path_or_state_dict, Mapping) else str(path_or_state_dict)
    tr = _Transfer(read_image_vit(path_or_state_dict), model.state_dict())
    rgb, bias = tr.get("patch_embed.proj.weight"), tr.get("patch_embed.proj.bias")
    for m in model.embeds:
        chans = MODALITIES[m]
        weight = None if rgb is None else (rgb if chans == 3 else mv_embedding_from_rgb(rgb, chans))
        tr.put(f"embeds.{m}.proj.weight", weight)
        tr.put(f"embeds.{m}.proj.bias", bias)
        _pos_embed(tr, f"pos_embeds.{m}", model.pos_embeds[m])
    if "cls_token" in tr.image and "pos_embed.pos" in tr.image:
        tr.put("cls_token", tr.get("cls_token") + tr.image["pos_embed.pos"][:, :1])
    tr.used.add("cls_token")  # an image ViT without CLS token (GAP) leaves the model's own
    _blocks(tr, model.blocks, zero_new)
    return load_checked(model, _finish(tr, model, False, source), source)
