"""MM-ViT (Chen & Ho, 2022): a multi-modal video transformer on the compressed domain (§3.2-3.3).

Inputs are any configured subset of the compressed-video modalities, as a mapping (or keywords) in the
layout of :class:`~videoformer.data.compressed.CompressedClip` with a batch axis in front:

    iframe (B, T, 3, H, W), mv (B, T, 2, H, W), residual (B, T, 3, H, W), audio (B, T, 128)

(``(B, T, C, H, W)``, unlike the ``(B, C, T, H, W)`` clips of the RGB models, so a batch of
:class:`~videoformer.data.datasets.CompressedVideoDataset` samples goes in as it is; other keys are ignored).
Frames should be normalised floats (:class:`~videoformer.data.transforms.CompressedTransform`); integer
tensors are only cast.

Tokens (Eq. 1-4): each visual modality has its own ``P×P`` patch embedding and separable space + time
positional embedding; the audio vector of frame ``t`` is projected by ``E_A`` (128 -> d), gets a temporal
embedding and is replicated over the ``N`` patch positions. The grid is ``(m t h w)`` with the modalities in
the order iframe, mv, residual, audio, plus one CLS token whose output is the clip representation.

Variants (``variant``):
``joint`` (I, Eq. 5-8): one MSA over all tokens.
``factorized`` (II, Eq. 9-11): MSA over ``(m, t)`` (same location, all modalities), then over ``(m, h, w)``.
``merged`` / ``coattn`` / ``shiftmerge`` (III, Eq. 12-15): MSA over ``t``, cross-modal attention over ``m``
    and MSA over ``(h, w)``; the cross-modal sublayer is merged attention (Eq. 16, K/V of all modalities),
    co-attention (K/V of the other modalities only) or shift-merge (Eq. 17-20, values only).
``local`` (IV): III with merged attention, the temporal and spatial MSA inside non-overlapping windows of
    ``F = T/2`` frames and ``M = N/4`` patches, each followed by a depthwise convolution whose kernel is the
    window (``F×1×1``, ``1×√M×√M``), stride 1.
``order`` ("TMS" by default, any permutation of T, M, S; Table 2) orders the sublayers; II uses the
relative order of T and S. Added sublayers (all but the spatial one) carry TimeSformer's extra ``d×d``
projection ``fc`` and leave the CLS token untouched; the spatial MSA replicates the CLS token per sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any, Mapping

import torch
from einops import rearrange, repeat
from torch import nn

from ..layers import AxisAttention, Block, Grid, Grouping, SeparablePosEmbed, TubeletEmbed, drop_path_rates, resample
from ..layers.attention import attend
from .base import TransformerConfig, VideoModel, init_weights

MODALITIES: dict[str, int] = {"iframe": 3, "mv": 2, "residual": 3, "audio": 128}
"""Modalities in grid order, with their channels (visual) or feature size (audio)."""
VISUAL = ("iframe", "mv", "residual")
VARIANTS = ("joint", "factorized", "merged", "coattn", "shiftmerge", "local")
ORDERS = tuple("".join(p) for p in permutations("TMS"))


class MissingModalityError(ValueError):
    """A modality the model was built for is absent from the input, or has the wrong shape."""


@dataclass
class MMViTConfig(TransformerConfig):
    """MM-ViT-B/16 on UCF-101 (101 classes, 8 frames of 224², all four modalities) by default."""

    num_classes: int = 101
    variant: str = "merged"
    modalities: tuple[str, ...] = ("iframe", "mv", "residual", "audio")
    order: str = "TMS"
    audio_dim: int = 128
    window_t: int | None = None  # IV: F frames per temporal window (default T/2)
    window_s: int | None = None  # IV: side of a spatial window, M = window_s² (default patches/2: M = N/4)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.modalities = tuple(self.modalities)
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown MM-ViT variant {self.variant!r}; choose from {VARIANTS}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be a permutation of 'TMS' (Table 2), got {self.order!r}")
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or len(set(self.modalities)) != len(self.modalities) or not set(self.modalities) & set(VISUAL):
            raise ValueError(f"modalities must be distinct names from {tuple(MODALITIES)} with at least one "
                             f"visual one, got {self.modalities}")
        self.modalities = tuple(m for m in MODALITIES if m in self.modalities)  # grid order
        m = len(self.modalities)
        if self.variant == "coattn" and m < 2:
            raise ValueError("co-attention attends to the other modalities: it needs at least two")
        if self.variant == "shiftmerge" and self.dim % m:
            raise ValueError(f"shift-merge splits values into {m} portions: dim={self.dim} is not divisible")
        if self.variant == "local":
            self.window_t = self.window_t or max(self.num_frames // 2, 1)
            self.window_s = self.window_s or max(self.patches // 2, 1)
            if self.num_frames % self.window_t or self.patches % self.window_s:
                raise ValueError(f"local windows {self.window_t} frames × {self.window_s}² patches do not tile "
                                 f"{self.num_frames} frames × {self.patches}² patches")


class CoAttention(AxisAttention):
    """Cross-modal attention in which a query of modality ``s`` attends to the keys and values of the other
    modalities ``S \\ {s}`` at the same ``(t, h, w)`` only (§3.3 "Co-Attention"); CLS tokens excluded."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, extra_proj: bool = True) -> None:
        super().__init__(dim, num_heads, [Grouping(("m",))], "exclude", qkv_bias, attn_drop, proj_drop, extra_proj)

    def _attend_group(self, qkv: torch.Tensor, grid: Grid, grouping: Grouping) -> torch.Tensor:
        """``qkv``: ``(B, N, 3, heads, d)`` -> ``(B, N, heads * d)``; each query sees ``m - 1`` keys."""
        if grid.m < 2:
            raise ValueError(f"co-attention needs at least two modalities, the grid has {grid.m}")
        body = grouping.group(rearrange(qkv, "b n three k d -> b n (three k d)"), grid)  # (B*t*h*w, m, ...)
        q, k, v = rearrange(body, "g m (three k d) -> three g k m d", three=3, d=self.head_dim)
        others = torch.tensor([[j for j in range(grid.m) if j != i] for i in range(grid.m)], device=q.device)
        k, v = (rearrange(t[:, :, others], "g k m j d -> (g m) k j d") for t in (k, v))  # (G*m, heads, m-1, d)
        q = rearrange(q, "g k m d -> (g m) k 1 d")
        out = attend(q, k, v, self.attn_drop if self.training else 0.0)
        out = rearrange(out, "(g m) k 1 d -> g m (k d)", m=grid.m)
        return grouping.ungroup(out, grid)


class ShiftMerge(nn.Module):
    """Shift-merge attention (Eq. 17-20): no queries or keys; each modality's value ``v^s`` is split into
    ``|S|`` portions and modality ``i`` receives portion ``i`` of every modality (concatenated in modality
    order) plus its own value, ``r^i = v_i^1 ‖ … ‖ v_i^|S| + v^i``; then the output and extra projections.
    CLS tokens receive no update."""

    def __init__(self, dim: int, qkv_bias: bool = True, proj_drop: float = 0.0, extra_proj: bool = True) -> None:
        super().__init__()
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, dim) if extra_proj else None
        self.proj_drop = nn.Dropout(proj_drop)

    @staticmethod
    def merge(v: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Eq. 17-20 on grid values ``(B, m*t*h*w, D)`` (``D`` divisible by ``m``)."""
        if v.shape[-1] % grid.m:
            raise ValueError(f"shift-merge: width {v.shape[-1]} is not divisible by {grid.m} modalities")
        portions = rearrange(v, "b (m n) (s c) -> b m n s c", m=grid.m, s=grid.m)
        return rearrange(portions, "b m n s c -> b (s n) (m c)") + v

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        grid.check(x)
        P = grid.prefix
        out = self.proj_drop(self.proj(self.merge(self.v(x[:, P:]), grid)))
        if self.fc is not None:
            out = self.fc(out)
        return torch.cat([torch.zeros_like(x[:, :P]), out], dim=1)


class ConvAttention(AxisAttention):
    """MM-ViT IV: windowed attention followed by a depthwise convolution of its grid output, per modality,
    with the window as kernel and stride 1 ("same" padding); the convolution starts as the identity."""

    def __init__(self, dim: int, num_heads: int, grouping: Grouping, kernel: tuple[int, int, int],
                 **kwargs: Any) -> None:
        super().__init__(dim, num_heads, [grouping], **kwargs)
        self.conv = nn.Conv3d(dim, dim, kernel, groups=dim)
        # "same" padding, the extra zero of an even kernel after the end: (w before, w after, h ..., t ...)
        self.padding = tuple(p for k in reversed(kernel) for p in ((k - 1) // 2, k // 2))
        self.reset_conv()

    def reset_conv(self) -> None:
        """Identity kernel: a one at the tap aligned with the output position (index ``(k - 1) // 2``)."""
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[(slice(None), 0, *((k - 1) // 2 for k in self.conv.kernel_size))] = 1.0
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        out = super().forward(x, grid)
        P = grid.prefix
        body = rearrange(out[:, P:], "b (m t h w) c -> (b m) c t h w", **grid.sizes)
        body = self.conv(nn.functional.pad(body, self.padding))
        body = rearrange(body, "(b m) c t h w -> b (m t h w) c", m=grid.m)
        return torch.cat([out[:, :P], body], dim=1)


def sublayer_plan(cfg: MMViTConfig) -> list[nn.Module]:
    """The attention sublayers of one block, in ``cfg.order`` (see the module docstring)."""
    d, heads = cfg.dim, cfg.num_heads
    common = dict(qkv_bias=cfg.qkv_bias, attn_drop=cfg.attn_drop_rate, proj_drop=cfg.drop_rate)

    def msa(axes: tuple[str, ...], added: bool) -> AxisAttention:
        return AxisAttention(d, heads, [Grouping(axes)], "exclude" if added else "replicate", extra_proj=added,
                             **common)

    if cfg.variant == "joint":
        return [msa(("m", "t", "h", "w"), False)]
    if cfg.variant == "factorized":
        parts = {"T": msa(("m", "t"), True), "S": msa(("m", "h", "w"), False)}
        return [parts[a] for a in cfg.order if a in parts]
    if cfg.variant == "local":
        wt, ws = cfg.window_t, cfg.window_s
        parts = {
            "T": ConvAttention(d, heads, Grouping(("t",), window={"t": wt}), (wt, 1, 1), prefix="exclude",
                               extra_proj=True, **common),
            "S": ConvAttention(d, heads, Grouping(("h", "w"), window={"h": ws, "w": ws}), (1, ws, ws), **common),
        }
    else:
        parts = {"T": msa(("t",), True), "S": msa(("h", "w"), False)}
    if cfg.variant == "coattn":
        parts["M"] = CoAttention(d, heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
    elif cfg.variant == "shiftmerge":
        parts["M"] = ShiftMerge(d, cfg.qkv_bias, cfg.drop_rate)
    else:
        parts["M"] = msa(("m",), True)
    return [parts[a] for a in cfg.order]


class MMViT(VideoModel):
    """MM-ViT variants I-IV (§3.3) on a configured subset of I-frames, motion vectors, residuals and audio."""

    def __init__(self, cfg: MMViTConfig) -> None:
        super().__init__()
        self.cfg, self.num_features, d = cfg, cfg.dim, cfg.dim
        self.modalities = cfg.modalities
        visual = [m for m in cfg.modalities if m in VISUAL]
        p, n = cfg.patch_size, cfg.patches
        self.embeds = nn.ModuleDict({m: TubeletEmbed(MODALITIES[m], d, (1, p, p)) for m in visual})  # Eq. 1-3
        self.pos_embeds = nn.ModuleDict({
            m: SeparablePosEmbed(d, Grid(t=cfg.num_frames, h=n, w=n), cfg.pos_std, time_std=cfg.time_std)
            for m in visual})
        if "audio" in cfg.modalities:  # Eq. 4
            self.audio_embed = nn.Linear(cfg.audio_dim, d)
            self.audio_pos = nn.Parameter(torch.zeros(1, cfg.num_frames, d))
            nn.init.trunc_normal_(self.audio_pos, std=cfg.pos_std)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList(
            Block(d, sublayer_plan(cfg), cfg.mlp_ratio, rate, cfg.drop_rate, cfg.act, cfg.norm_eps)
            for rate in drop_path_rates(cfg.drop_path_rate, cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        init_weights(self, cfg.weight_std)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self._init_head(cfg.num_classes, cfg.head_drop_rate)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | ({"audio_pos"} if "audio" in self.modalities else set())

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-modality input shape of one clip at the configured size (no batch axis)."""
        cfg, s = self.cfg, self.cfg.img_size
        return {m: (cfg.num_frames, cfg.audio_dim) if m == "audio" else (cfg.num_frames, MODALITIES[m], s, s)
                for m in self.modalities}

    def _inputs(self, inputs: Mapping[str, torch.Tensor] | None, kwargs: Mapping[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
        if inputs is not None and not isinstance(inputs, Mapping):
            shape = tuple(getattr(inputs, "shape", ()))
            raise MissingModalityError(f"MM-ViT takes a mapping {{modality: tensor}} of {self.modalities} "
                                       f"(see input_shapes()), got {type(inputs).__name__} {shape}")
        given = {**(inputs or {}), **kwargs}
        missing = [m for m in self.modalities if m not in given]
        if missing:
            raise MissingModalityError(f"MM-ViT built for {self.modalities} got no {missing} "
                                       f"(inputs: {sorted(given)})")
        out = {}
        dtype = self.cls_token.dtype
        for m in self.modalities:
            x = given[m]
            want, chans = (3, self.cfg.audio_dim) if m == "audio" else (5, MODALITIES[m])
            if x.ndim != want or x.shape[2] != chans:
                layout = f"(B, T, {chans})" if m == "audio" else f"(B, T, {chans}, H, W)"
                raise MissingModalityError(f"{m}: expected {layout}, got {tuple(x.shape)}")
            out[m] = x if x.dtype == dtype else x.to(dtype)
        shapes = {m: tuple(x.shape[:2]) for m, x in out.items()}
        if len(set(shapes.values())) > 1:
            raise MissingModalityError(f"modalities differ in batch size or frames (B, T): {shapes}")
        sizes = {m: tuple(out[m].shape[-2:]) for m in out if m in VISUAL}
        if len(set(sizes.values())) > 1:
            raise MissingModalityError(f"visual modalities differ in size (H, W): {sizes}")
        return out

    def tokenize(self, inputs: Mapping[str, torch.Tensor] | None = None, **kwargs: torch.Tensor
                 ) -> tuple[torch.Tensor, Grid]:
        """Eq. 1-4: modality tokens ``(B, 1 + m*T*N, D)`` in ``(m t h w)`` order after the CLS token."""
        x = self._inputs(inputs, kwargs)
        tokens, grid = [], None
        for m in self.modalities:
            if m in VISUAL:
                z, grid = self.embeds[m](rearrange(x[m], "b t c h w -> b c t h w"))
                tokens.append(self.pos_embeds[m](z, grid))
        for m in self.modalities:
            if m == "audio":  # replicated N times along space
                pos = resample(self.audio_pos, (self.cfg.num_frames,), (grid.t,))
                z = self.audio_embed(x[m]) + pos
                tokens.append(repeat(z, "b t d -> b (t n) d", n=grid.h * grid.w))
        grid = grid.replace(m=len(self.modalities), prefix=1)
        body = torch.cat(tokens, dim=1)
        return self.prepend(self.cls_token, body), grid

    def forward_features(self, inputs: Mapping[str, torch.Tensor] | None = None, **kwargs: torch.Tensor
                         ) -> torch.Tensor:
        """Modalities -> normalised tokens ``(B, 1 + m*T*N, D)``."""
        x, grid = self.tokenize(inputs, **kwargs)
        return self.norm(self.run_blocks(self.blocks, x, grid))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]

    def forward(self, inputs: Mapping[str, torch.Tensor] | None = None, **kwargs: torch.Tensor) -> torch.Tensor:
        """Modalities (mapping or keywords, see the module docstring) -> ``(B, num_classes)`` logits."""
        return self.forward_head(self.forward_features(inputs, **kwargs))


def mv_embedding_from_rgb(weight: torch.Tensor, channels: int = 2) -> torch.Tensor:
    """Patch filter for a ``channels``-channel input from an RGB one ``(D, 3, 1, p, p)``: the mean over the
    RGB channels, replicated (TSN's cross-modality initialisation for optical flow)."""
    return repeat(weight.mean(dim=1), "d t p q -> d c t p q", c=channels)


def init_mmvit_from_image(model: MMViT, path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
                          zero_new: bool = True) -> MMViT:
    """Initialise MM-ViT from an image ViT (any format :func:`~videoformer.weights.read_image_vit` reads).

    - ``E_I`` and ``E_R`` take the pretrained patch embedding; ``E_M`` (2 channels) the mean of its RGB
      filters on both channels (:func:`mv_embedding_from_rgb`); ``E_A`` and the audio time embedding keep
      their initialisation. Each visual modality's space embedding is the resampled image embedding, its time
      embedding zero; the CLS token is the image CLS token plus the image's CLS position embedding.
    - Every attention sublayer copies the image MSA (shift-merge: its value rows) and the LayerNorm before
      it the image ``norm1``; sublayers with an extra ``fc`` start with it zeroed (``zero_new``), so each
      added sublayer is a no-op at initialisation, as in TimeSformer. IV's convolutions start as identities.
    - MLPs, their LayerNorms and the final norm are copied; the classifier stays the model's own.
    """
    from ..weights.common import CheckpointMismatchError, load_checked
    from ..weights.inflate import _pos_embed, _Transfer
    from ..weights.image import read_image_vit

    source = "state dict" if isinstance(path_or_state_dict, Mapping) else str(path_or_state_dict)
    tr = _Transfer(read_image_vit(path_or_state_dict), model.state_dict())
    rgb, bias = tr.get("patch_embed.proj.weight"), tr.get("patch_embed.proj.bias")
    for m in model.embeds:
        weight = None if rgb is None else (rgb if MODALITIES[m] == 3 else mv_embedding_from_rgb(rgb, MODALITIES[m]))
        tr.put(f"embeds.{m}.proj.weight", weight)
        tr.put(f"embeds.{m}.proj.bias", bias)
        _pos_embed(tr, f"pos_embeds.{m}", model.pos_embeds[m])
    if "cls_token" in tr.image and "pos_embed.pos" in tr.image:
        tr.put("cls_token", tr.get("cls_token") + tr.image["pos_embed.pos"][:, :1])
    tr.used.add("cls_token")  # an image ViT without CLS token (GAP) leaves the model's own
    for i, block in enumerate(model.blocks):
        b = f"blocks.{i}"
        for j, attn in enumerate(block.attns):
            for p in ("weight", "bias"):
                tr.copy(f"{b}.norms.{j}.{p}", f"{b}.norms.0.{p}")
                if isinstance(attn, ShiftMerge):
                    qkv = tr.get(f"{b}.attns.0.qkv.{p}")
                    tr.put(f"{b}.attns.{j}.v.{p}", None if qkv is None else qkv.chunk(3, dim=0)[2])
                else:
                    tr.copy(f"{b}.attns.{j}.qkv.{p}", f"{b}.attns.0.qkv.{p}")
                tr.copy(f"{b}.attns.{j}.proj.{p}", f"{b}.attns.0.proj.{p}")
                if getattr(attn, "fc", None) is not None and zero_new:
                    tr.put(f"{b}.attns.{j}.fc.{p}", torch.zeros_like(tr.out[f"{b}.attns.{j}.fc.{p}"]))
        for key in [k for k in tr.out if k.startswith((f"{b}.norm_mlp.", f"{b}.mlp."))]:
            tr.copy(key, key)
    for p in ("weight", "bias"):
        tr.copy(f"norm.{p}", f"norm.{p}")
    tr.used |= {"head.weight", "head.bias"}
    unexpected = sorted(set(tr.image) - tr.used)
    if tr.missing or unexpected or tr.misshaped:
        raise CheckpointMismatchError(source, tr.missing, unexpected, tr.misshaped)
    return load_checked(model, tr.out, source)
