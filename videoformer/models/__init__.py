"""Model families (one file each) and the registry."""
from .base import BACKBONES, TransformerConfig, VideoModel
from .registry import UnknownModelError, create_model, get_spec, list_models, model_config, register
from .timesformer import TimeSformer, TimeSformerConfig, build_timesformer
from .vit import FramewiseViT, FramewiseViTConfig
from .vivit import ViViT, ViViTConfig, ViViTFactorisedEncoder, build_vivit

__all__ = [
    "BACKBONES", "FramewiseViT", "FramewiseViTConfig", "TimeSformer", "TimeSformerConfig", "TransformerConfig",
    "UnknownModelError", "ViViT", "ViViTConfig", "ViViTFactorisedEncoder", "VideoModel", "build_timesformer",
    "build_vivit", "create_model", "get_spec", "list_models", "model_config", "register",
]
from .msca import MSCA, MSCAConfig, TokenShift, TokenShiftConfig, msca_sublayer  # noqa: E402

__all__ += ["MSCA", "MSCAConfig", "TokenShift", "TokenShiftConfig", "msca_sublayer"]
from .mvit import CubeEmbed, MultiscaleBlock, MViT, MViTConfig  # noqa: E402

__all__ += ["CubeEmbed", "MViT", "MViTConfig", "MultiscaleBlock"]
from .mmvit import MMViT, MMViTConfig, init_mmvit_from_image  # noqa: E402

__all__ += ["MMViT", "MMViTConfig", "init_mmvit_from_image"]
