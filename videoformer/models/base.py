"""What every videoformer model shares: the classifier head, the model API, initialisation."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..data.batch import InputSpec
from ..layers import Block, Grid, JointPosEmbed, SeparablePosEmbed, Sublayer, drop_path_rates
from ..layers.block import PreHook


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """ViT initialisation: truncated normal linear weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def make_blocks(cfg: "TransformerConfig", plan: Sequence[Sequence[Sublayer]], rates: Sequence[float] | None = None,
                pre: PreHook | None = None) -> nn.ModuleList:
    """One :class:`Block` per entry of ``plan`` (the :class:`Sublayer` s of that block), with ``cfg``'s width,
    heads, MLP, dropouts and norms; stochastic depth ``rates`` default to ViViT Eq. 10 over the plan."""
    rates = drop_path_rates(cfg.drop_path_rate, len(plan)) if rates is None else rates
    return nn.ModuleList(
        Block(cfg.dim, cfg.num_heads, specs, cfg.mlp_ratio, rate, cfg.drop_rate, cfg.attn_drop_rate, cfg.qkv_bias,
              cfg.act, cfg.norm_eps, pre)
        for specs, rate in zip(plan, rates)
    )


class VideoModel(nn.Module):
    """The one model API: ``forward(x) -> logits``, ``forward_features``, ``forward_head(pre_logits=)``,
    ``reset_classifier``, ``set_grad_checkpointing``, ``no_weight_decay``.

    Subclasses set ``num_features`` and implement ``forward_features`` and ``pool``; a ViT-based family builds
    its blocks with :func:`make_blocks` from its ``sublayer_plan(cfg)`` (one tuple of :class:`Sublayer` s per
    block) and ends its constructor with :meth:`init_parameters`.
    """

    num_features: int
    grad_checkpointing: bool = False
    image_norm: str = "norm"  # the norm after the image-ViT blocks (image-ViT initialisation copies ``norm`` there)
    # Set by create_model / load_pretrained: the registry name and fields that rebuild the model, the input
    # convention of its weights (videoformer.data.preprocessing.Preprocessing) and its class names, if known.
    registry_name: str | None = None
    registry_config: dict[str, Any] | None = None
    preprocessing: Any = None
    classes: list[str] | dict[str, list[str]] | None = None

    @property
    def input_spec(self) -> InputSpec:
        """What the model consumes: frames, size, modalities (RGB clips here) and input convention."""
        return InputSpec(self.cfg.num_frames, self.cfg.img_size, preprocessing=self.preprocessing)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write a self-describing directory (config.json + model.safetensors) that
        ``videoformer.load_pretrained(directory)`` reads with no other argument."""
        from ..weights.pretrained import save_pretrained

        return save_pretrained(self, directory)

    def init_parameters(self, cfg: "TransformerConfig") -> None:
        """ViT initialisation of every linear layer (std ``cfg.weight_std``) and norm, truncated-normal prefix
        tokens, a fresh head."""
        init_weights(self, cfg.weight_std)
        for name in ("cls_token", "temporal_cls_token"):
            if getattr(self, name, None) is not None:
                nn.init.trunc_normal_(getattr(self, name), std=0.02)
        self.head_drop = nn.Dropout(cfg.head_drop_rate)
        self.reset_classifier(cfg.num_classes)

    def embed(self, x: torch.Tensor, grid: Grid, token: nn.Parameter | None, pos_embed: nn.Module | None
              ) -> tuple[torch.Tensor, Grid]:
        """Grid tokens -> ``[token, x] + p`` (ViViT Eq. 1) and their grid with the prefix counted."""
        grid = grid.replace(prefix=int(token is not None))
        x = self.prepend(token, x)
        return (x if pos_embed is None else pos_embed(x, grid)), grid

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs (0: no classifier)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names of the positional embeddings and prefix tokens, which the optimiser should not decay."""
        names = set()
        for mod_name, module in self.named_modules():
            if isinstance(module, (JointPosEmbed, SeparablePosEmbed)):
                names |= {f"{mod_name}.{p}" for p, _ in module.named_parameters()}
        names |= {n for n, _ in self.named_parameters() if n.split(".")[-1] in ("cls_token", "temporal_cls_token")}
        return names

    @staticmethod
    def prepend(token: nn.Parameter | None, x: torch.Tensor) -> torch.Tensor:
        """``[token, x_1 .. x_N]`` for every clip of the batch (ViViT Eq. 1); ``x`` itself when ``token`` is None."""
        return x if token is None else torch.cat([token.expand(x.shape[0], -1, -1), x], dim=1)

    def run_block(self, block: nn.Module, *args: Any) -> Any:
        """``block(*args)``, recomputed in the backward pass when gradient checkpointing is on."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def run_blocks(self, blocks: Sequence[Block], x: torch.Tensor, grid: Grid) -> torch.Tensor:
        for block in blocks:
            x = self.run_block(block, x, grid)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Features from ``forward_features`` -> one ``(B, num_features)`` clip representation."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` clip -> ``(B, num_classes)`` logits."""
        return self.forward_head(self.forward_features(x))


BACKBONES: dict[str, dict[str, int]] = {
    "tiny": dict(dim=64, depth=2, num_heads=4),  # for tests and the demo
    "ti": dict(dim=192, depth=12, num_heads=3),
    "s": dict(dim=384, depth=12, num_heads=6),
    "b": dict(dim=768, depth=12, num_heads=12),  # ViViT §4.1
    "l": dict(dim=1024, depth=24, num_heads=16),
    "h": dict(dim=1280, depth=32, num_heads=16),
}


# std of a patch embedding's outputs at initialisation (PyTorch's default conv init on unit-variance pixels: 1/sqrt(3)
# = 0.58, for any width and patch size), rounded: the default scale of positional and time embeddings
EMBED_STD = 0.5


@dataclass
class TransformerConfig:
    """Fields every ViT-based video model shares. Clip size: ``num_frames × img_size²``."""

    num_classes: int = 400
    num_frames: int = 8
    img_size: int = 224
    in_chans: int = 3
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0  # dropout after MLP / projections
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0  # stochastic depth of the last layer (ViViT Eq. 10)
    head_drop_rate: float = 0.0
    act: str = "gelu"
    norm_eps: float = 1e-6
    # Initialisation from scratch (pretrained and converted weights replace it; image-ViT inflation zeroes the time
    # embedding itself). Frame order needs a content x position interaction, which a near-linear model with a
    # faint position signal learns only slowly (README, "Learning frame order from scratch"), hence:
    # - init_std, the std of linear weights; None: ViT's 0.02 from ViT-B's width (d = 768) up, 0.02 * sqrt(768 /
    #   dim) below it, so every width starts with ViT-B's pre-activation scale (with 0.02, d = 64 starts near-linear);
    # - pos_embed_std / time_embed_std, the learned positional and separable time embeddings; None: EMBED_STD, the
    #   scale of the patch embedding's output, so position is as visible as content. The papers' 0.02 and the
    #   official TimeSformer's zero time embedding (which leaves divided / factorised attention exactly blind to
    #   frame order) are pos_embed_std=0.02, time_embed_std=0 (with init_std=0.02: the paper-faithful init).
    init_std: float | None = None
    pos_embed_std: float | None = None
    time_embed_std: float | None = None

    @property
    def weight_std(self) -> float:
        """The std of linear weights at initialisation (``init_std`` or its width-scaled default)."""
        return self.init_std if self.init_std is not None else 0.02 * max(1.0, math.sqrt(768 / self.dim))

    @property
    def pos_std(self) -> float:
        return EMBED_STD if self.pos_embed_std is None else self.pos_embed_std

    @property
    def time_std(self) -> float:
        return EMBED_STD if self.time_embed_std is None else self.time_embed_std

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")

    @property
    def patches(self) -> int:
        """Patches along one side of a frame."""
        return self.img_size // self.patch_size
