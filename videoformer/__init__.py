"""videoformer: video action recognition transformers (ViViT, TimeSformer, MViT, MSCA, MM-ViT).

The public names are imported on first use (PEP 562), so ``videoformer --help`` does not pay for torch."""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_LAZY = {"create_model": "videoformer.models", "list_models": "videoformer.models",
         "init_from_image": "videoformer.weights", "load_pretrained": "videoformer.weights",
         "extract_features": "videoformer.engine.features"}
__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'videoformer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
