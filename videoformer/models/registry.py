"""Named model configurations: ``create_model(name, **overrides)`` and ``list_models()``."""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..data.preprocessing import Preprocessing
from .base import BACKBONES, TransformerConfig
from .timesformer import TimeSformerConfig, build_timesformer
from .vit import FramewiseViT, FramewiseViTConfig
from .vivit import ViViTConfig, build_vivit


class UnknownModelError(ValueError):
    """A model name that is not registered; the message lists close matches."""


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its config class, the values that differ from the defaults, its builder, and the
    input convention of its family's code (``preprocessing``: :class:`Preprocessing` fields other than
    ``num_frames`` / ``img_size``, which come from the config; a ``resize`` scales with ``img_size``)."""

    name: str
    config_cls: type[TransformerConfig]
    builder: Callable[[Any], nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    paper: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def config(self, **overrides: Any) -> TransformerConfig:
        """The config with ``overrides``; lists (from YAML / JSON) become tuples where the field is a tuple."""
        valid = {f.name for f in dataclasses.fields(self.config_cls) if f.init}
        bad = sorted(set(overrides) - valid)
        if bad:
            raise ValueError(f"{self.name}: unknown config field(s) {bad}; valid fields: {sorted(valid)}")
        hints = typing.get_type_hints(self.config_cls)
        values = {k: _as_tuples(v) if "tuple" in str(hints.get(k)) else v for k, v in overrides.items()}
        return self.config_cls(**{**self.defaults, **values})

    def default_preprocessing(self, cfg: TransformerConfig) -> Preprocessing:
        """The family's input convention at ``cfg``'s frames and size."""
        values = dict(self.preprocessing)
        if values.get("resize"):
            base = self.defaults.get("img_size", self.config_cls.img_size)
            values["resize"] = round(values["resize"] * cfg.img_size / base)
        return Preprocessing(**values, num_frames=cfg.num_frames, img_size=cfg.img_size)


_REGISTRY: dict[str, ModelSpec] = {}


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def config_fields(cfg: Any) -> dict[str, Any]:
    """The constructor fields of a config (``create_model(name, **config_fields(cfg))`` rebuilds it; fields
    derived in ``__post_init__`` are left out)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}


def register(name: str, config_cls: type[TransformerConfig], builder: Callable[[Any], nn.Module],
             paper: str = "", preprocessing: dict[str, Any] | None = None, **defaults: Any) -> None:
    """Add a named configuration to the registry (later families register themselves the same way)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = ModelSpec(name, config_cls, builder, defaults, paper, dict(preprocessing or {}))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean: {', '.join(close)}" if close else f"; registered: {', '.join(list_models())}"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def model_config(name: str, num_classes: int | None = None, num_frames: int | None = None,
                 img_size: int | None = None, **overrides: Any) -> TransformerConfig:
    """The config ``create_model`` would build, with the given overrides."""
    common = dict(num_classes=num_classes, num_frames=num_frames, img_size=img_size)
    overrides.update({k: v for k, v in common.items() if v is not None})
    return get_spec(name).config(**overrides)


def create_model(name: str, num_classes: int | None = None, num_frames: int | None = None,
                 img_size: int | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("timesformer_b16_divided", num_classes=174)``.

    ``overrides`` are fields of the family's config dataclass (``drop_path_rate``, ``temporal_depth`` ...).
    The model records its registry name and config (``model.registry_name``, ``model.registry_config``: the
    fields ``create_model`` rebuilds it from) and its family's input convention (``model.preprocessing``),
    which pretrained weights replace by their own.
    """
    spec = get_spec(name)
    cfg = model_config(name, num_classes, num_frames, img_size, **overrides)
    model = spec.builder(cfg)
    model.registry_name, model.registry_config = name, config_fields(cfg)
    model.preprocessing = spec.default_preprocessing(cfg)
    return model


TINY = dict(BACKBONES["tiny"], patch_size=8, img_size=32, num_frames=4, num_classes=10)
# Input conventions of each family's code (the tiny test models keep the library default, ImageNet statistics).
# TokShift-Transformer / MSCA: pixels to [-1, 1], 8 frames 32 apart (k400_*_8x32_*.yml); official TimeSformer and
# PySlowFast: mean 0.45, std 0.225 (config/defaults.py), K400 8x32; Scenic ViViT: [-1, 1] (zero-centred), stride 2,
# short side 256 before the 224 crop; MM-ViT (compressed domain): the data module's own normalisation.
PRE_TOKSHIFT = dict(mean=(0.5,) * 3, std=(0.5,) * 3, stride=32)
PRE_SLOWFAST = dict(mean=(0.45,) * 3, std=(0.225,) * 3)
PRE_VIVIT = dict(mean=(0.5,) * 3, std=(0.5,) * 3, stride=2, resize=256)

# Frame-wise ViT (MSCA paper baseline; TokShift-Transformer's "ViT (Video)" baseline).
register("vit_b16_framewise", FramewiseViTConfig, FramewiseViT, "MSCA", PRE_TOKSHIFT, **BACKBONES["b"])
register("vit_l16_framewise", FramewiseViTConfig, FramewiseViT, "MSCA", PRE_TOKSHIFT, **BACKBONES["l"])
register("vit_tiny_framewise", FramewiseViTConfig, FramewiseViT, "MSCA", **TINY)

# ViViT (§3.3, Table 2): ViViT-<backbone>/<patch>x<tubelet t>.
_VIVIT = {"joint": dict(model=1), "fe": dict(model=2), "fsa": dict(model=3), "fdp": dict(model=4)}
for _kind, _extra in _VIVIT.items():
    register(f"vivit_b16x2_{_kind}", ViViTConfig, build_vivit, "ViViT", PRE_VIVIT, **BACKBONES["b"], **_extra)
    register(f"vivit_tiny_{_kind}", ViViTConfig, build_vivit, "ViViT", **TINY, **_extra)
register("vivit_b16x2_fe_avgpool", ViViTConfig, build_vivit, "ViViT", PRE_VIVIT, **BACKBONES["b"], model=2,
         temporal_depth=0)
register("vivit_l16x2_joint", ViViTConfig, build_vivit, "ViViT", PRE_VIVIT, **BACKBONES["l"], model=1)
register("vivit_l16x2_fe", ViViTConfig, build_vivit, "ViViT", PRE_VIVIT, **BACKBONES["l"], model=2)
register("vivit_h14x2_joint", ViViTConfig, build_vivit, "ViViT", PRE_VIVIT, **BACKBONES["h"], model=1, patch_size=14)
register("vivit_h14x2_fe", ViViTConfig, build_vivit, "ViViT", PRE_VIVIT, **BACKBONES["h"], model=2, patch_size=14)

# TimeSformer (Table 1): the five attention schemes, ViT-B/16 on 8 frames of 224², 32 frames apart.
for _scheme in ("space", "joint", "divided", "local_global", "axial"):
    register(f"timesformer_b16_{_scheme}", TimeSformerConfig, build_timesformer, "TimeSformer",
             dict(PRE_SLOWFAST, stride=32), **BACKBONES["b"], scheme=_scheme)
    register(f"timesformer_tiny_{_scheme}", TimeSformerConfig, build_timesformer, "TimeSformer",
             **TINY, scheme=_scheme)
# The paper's TimeSformer-HR (16 frames of 448², 16 apart) and TimeSformer-L (96 frames of 224², 4 apart; "L" is
# the clip length: the backbone is ViT-B, as in the release TimeSformer_divST_96x4_224).
register("timesformer_hr", TimeSformerConfig, build_timesformer, "TimeSformer", dict(PRE_SLOWFAST, stride=16),
         **BACKBONES["b"], scheme="divided", num_frames=16, img_size=448)
register("timesformer_l", TimeSformerConfig, build_timesformer, "TimeSformer", dict(PRE_SLOWFAST, stride=4),
         **BACKBONES["b"], scheme="divided", num_frames=96)

# MSCA / TokenShift (Hashiguchi & Tamaki 2022): frame-wise ViT with temporal cross-attention or CLS shift.
from .msca import MSCA, MSCAConfig, TokenShift, TokenShiftConfig  # noqa: E402

register("msca_b16", MSCAConfig, MSCA, "MSCA", PRE_TOKSHIFT, **BACKBONES["b"], variant="KV", heads_back=1,
         heads_fwd=1)
register("msca_b16_patch", MSCAConfig, MSCA, "MSCA", PRE_TOKSHIFT, **BACKBONES["b"], variant="pKV", tokens_back=8,
         tokens_fwd=8)
register("tokenshift_b16", TokenShiftConfig, TokenShift, "MSCA", PRE_TOKSHIFT, **BACKBONES["b"])
register("tokenshift_l16", TokenShiftConfig, TokenShift, "MSCA", PRE_TOKSHIFT, **BACKBONES["l"])
register("msca_tiny", MSCAConfig, MSCA, "MSCA", **TINY, variant="KV", heads_back=1, heads_fwd=1)
register("msca_tiny_patch", MSCAConfig, MSCA, "MSCA", **TINY, variant="pKV", tokens_back=2, tokens_fwd=2)
register("tokenshift_tiny", TokenShiftConfig, TokenShift, "MSCA", **TINY)

# MViT v1 (Fan et al., 2021): Tables 3b/3c, 4, 5 (B-24, K600), 17 (T = 1); the paper's ViT-B baseline (Table 3a).
from .mvit import MViT, MViTConfig  # noqa: E402

# MViT-B 16x4 and the image MViT-B as released (PySlowFast configs: POOL_KVQ_KERNEL 3×3×3 / 1×3×3 for every Q
# and K/V pool, stride-1 K/V pools included); the 32×3 config has none, so its pools use k = s + 1.
register("mvit_b_16x4", MViTConfig, MViT, "MViT", dict(PRE_SLOWFAST, stride=4), pool_kernel=(3, 3, 3))
register("mvit_b_32x3", MViTConfig, MViT, "MViT", dict(PRE_SLOWFAST, stride=3), num_frames=32)
register("mvit_b_64x3", MViTConfig, MViT, "MViT", dict(PRE_SLOWFAST, stride=3), num_frames=64)
register("mvit_b24_32x3", MViTConfig, MViT, "MViT", dict(PRE_SLOWFAST, stride=3), num_frames=32,
         stage_depths=(2, 3, 16, 3), num_classes=600)
register("mvit_s", MViTConfig, MViT, "MViT", dict(PRE_SLOWFAST, stride=4), dim=128, stage_depths=(3, 7, 6),
         patch_size=8, cube_kernel=(3, 8, 8), kv_stride=(1, 4, 4))
register("mvit_b16_image", MViTConfig, MViT, "MViT", num_frames=1, cube_kernel=(1, 7, 7), cube_stride_t=1,
         kv_stride=(1, 4, 4), pool_kernel=(1, 3, 3), pos_embed="space", num_classes=1000)
register("mvit_tiny", MViTConfig, MViT, "MViT", dim=16, stage_depths=(1, 2, 2), kv_stride=(1, 4, 4),
         img_size=32, num_frames=4, num_classes=10)
register("vit_b16_joint_baseline", ViViTConfig, build_vivit, "MViT", **BACKBONES["b"], model=1, tubelet_t=1,
         num_frames=8)

# MM-ViT (Chen & Ho, 2022), Table 1: variants I-IV on compressed video (UCF-101: 101 classes, 8 frames).
from .mmvit import VARIANTS as _MMVIT_VARIANTS, MMViT, MMViTConfig  # noqa: E402

for _variant in _MMVIT_VARIANTS:
    register(f"mmvit_b16_{_variant}", MMViTConfig, MMViT, "MM-ViT", **BACKBONES["b"], variant=_variant)
    register(f"mmvit_tiny_{_variant}", MMViTConfig, MMViT, "MM-ViT", **TINY, variant=_variant)
