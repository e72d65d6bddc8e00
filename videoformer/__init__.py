"""videoformer: video action recognition transformers (ViViT, TimeSformer, MViT, MSCA, MM-ViT)."""
from .models import create_model, list_models
from .weights import init_from_image, load_pretrained

__version__ = "0.1.0"
__all__ = ["create_model", "extract_features", "init_from_image", "list_models", "load_pretrained", "__version__"]


def __getattr__(name: str):
    """``videoformer.extract_features`` (``engine.features``), imported on first use."""
    if name == "extract_features":
        from .engine.features import extract_features

        return extract_features
    raise AttributeError(f"module 'videoformer' has no attribute {name!r}")
