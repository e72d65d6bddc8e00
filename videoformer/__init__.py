"""videoformer: video action recognition transformers (ViViT, TimeSformer, MViT, MSCA, MM-ViT)."""
from .models import create_model, list_models
from .weights import init_from_image, load_pretrained

__version__ = "0.1.0"
__all__ = ["create_model", "init_from_image", "list_models", "load_pretrained", "__version__"]
