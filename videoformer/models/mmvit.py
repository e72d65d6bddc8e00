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

from dataclasses import dataclass, replace
from itertools import permutations
from pathlib import Path
from typing import Mapping

import torch
from einops import rearrange, repeat
from torch import nn

from ..data.batch import InputSpec
from ..layers import ShiftMerge  # noqa: F401 (re-exported: MM-ViT's shift-merge sublayer)
from ..layers import (SHIFT_MERGE, Grid, Grouping, OthersOnly, SeparablePosEmbed, Sublayer, TubeletEmbed, WindowConv,
                      attend_over, resample)
from .base import TransformerConfig, VideoModel, make_blocks

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
        self.blocks = make_blocks(cfg, self.sublayer_plan(cfg))
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.init_parameters(cfg)

    @staticmethod
    def sublayer_plan(cfg: MMViTConfig) -> list[tuple[Sublayer, ...]]:
        """The sublayers of each block, in ``cfg.order`` (see the module docstring). Added sublayers (all but the
        spatial one) leave the CLS token alone, carry the extra ``fc`` and start as no-ops from an image ViT."""
        added = dict(prefix="exclude", extra_proj=True, init="added")
        if cfg.variant == "joint":
            return [(attend_over("m", "t", "h", "w"),)] * cfg.depth
        if cfg.variant == "factorized":
            parts = {"T": attend_over("m", "t", **added), "S": attend_over("m", "h", "w")}
            return [tuple(parts[a] for a in cfg.order if a in parts)] * cfg.depth
        if cfg.variant == "local":  # windows followed by a depthwise convolution over the window
            wt, ws = cfg.window_t, cfg.window_s
            parts = {
                "T": Sublayer((Grouping(("t",), window={"t": wt}),), post=WindowConv((wt, 1, 1)), **added),
                "S": Sublayer((Grouping(("h", "w"), window={"h": ws, "w": ws}),), post=WindowConv((1, ws, ws))),
            }
        else:
            parts = {"T": attend_over("t", **added), "S": attend_over("h", "w")}
        parts["M"] = {
            "coattn": attend_over("m", mask=OthersOnly(), **added),  # keys of the other modalities only
            "shiftmerge": SHIFT_MERGE,
        }.get(cfg.variant, attend_over("m", **added))
        return [tuple(parts[a] for a in cfg.order)] * cfg.depth

    @property
    def input_spec(self) -> InputSpec:
        """Frames, size, input convention and the compressed-domain modalities it reads (grid order)."""
        return replace(super().input_spec, modalities=self.modalities)

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
        first = next(iter(out.values())).shape[:2]
        if any(x.shape[0] != first[0] or x.shape[1] != first[1] for x in out.values()):  # traceable (no set of sizes)
            shapes = {m: tuple(x.shape[:2]) for m, x in out.items()}
            raise MissingModalityError(f"modalities differ in batch size or frames (B, T): {shapes}")
        visual = [out[m].shape[-2:] for m in out if m in VISUAL]
        if any(s[0] != visual[0][0] or s[1] != visual[0][1] for s in visual):
            sizes = {m: tuple(out[m].shape[-2:]) for m in out if m in VISUAL}
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
        return self.embed(torch.cat(tokens, dim=1), grid.replace(m=len(self.modalities)), self.cls_token, None)

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
    """Initialise MM-ViT from an image ViT: :func:`videoformer.weights.inflate.init_mmvit_from_image`."""
    from ..weights.inflate import init_mmvit_from_image as init

    return init(model, path_or_state_dict, zero_new)
