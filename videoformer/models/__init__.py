"""Model families (one file each) and the registry."""
from .base import BACKBONES, TransformerConfig, VideoModel
from .registry import UnknownModelError, create_model, get_spec, list_models, model_config, register
from .timesformer import TimeSformer, TimeSformerConfig, build_timesformer
from .vit import FramewiseViT, FramewiseViTConfig
from .vivit import ViViT, ViViTConfig

__all__ = [
    "BACKBONES", "FramewiseViT", "FramewiseViTConfig", "TimeSformer", "TimeSformerConfig", "TransformerConfig",
    "UnknownModelError", "ViViT", "ViViTConfig", "VideoModel", "build_timesformer", "create_model", "get_spec",
    "list_models", "model_config", "register",
]
from .msca import MSCA, CrossFrameAttention, MSCAConfig, TokenShift, TokenShiftBlock, TokenShiftConfig  # noqa: E402

__all__ += ["CrossFrameAttention", "MSCA", "MSCAConfig", "TokenShift", "TokenShiftBlock", "TokenShiftConfig"]
from .mvit import CubeEmbed, MultiscaleBlock, MViT, MViTConfig  # noqa: E402

__all__ += ["CubeEmbed", "MViT", "MViTConfig", "MultiscaleBlock"]
from .mmvit import MMViT, CoAttention, ConvAttention, MMViTConfig, ShiftMerge, init_mmvit_from_image  # noqa: E402

__all__ += ["CoAttention", "ConvAttention", "MMViT", "MMViTConfig", "ShiftMerge", "init_mmvit_from_image"]
