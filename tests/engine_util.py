"""Tiny generated video datasets for the engine tests (written with PyAV into tmp dirs, never committed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from videoformer.data.synthetic import write_video

COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], dtype=np.float64)


def colour_clip(label: int, rng: np.random.Generator, frames: int = 8, size: int = 40) -> np.ndarray:
    """A (T, H, W, 3) clip whose tint is the class and whose texture is random."""
    noise = rng.normal(0, 40, size=(frames, size, size, 3))
    return np.clip(COLOURS[label] + noise, 0, 255).astype(np.uint8)


def make_folder_dataset(root: Path, per_class: tuple[int, int] = (8, 2), classes: int = 3, seed: int = 0) -> Path:
    """``root/{train,val}/<class>/<video>.mp4`` with ``per_class`` videos per class and split."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_video(d / f"v{i}.mp4", colour_clip(c, rng))
    return root


def base_overrides(root: Path, out: Path) -> list[str]:
    """A tiny, fast, deterministic run on ``make_folder_dataset(root)``."""
    return [f"data.root={root}", "data.format=folder", "data.train=train", "data.val=val",
            "model.name=vit_tiny_framewise", "model.num_frames=4", "model.img_size=32", "data.stride=2",
            "train.batch_size=4", "train.epochs=2", "train.optimizer=adamw", "train.lr=0.003",
            "train.schedule=cosine", "train.warmup_epochs=0.5", "train.progress=false",
            "train.deterministic=true", f"output_dir={out}"]


def write_config(path: Path, overrides: list[str]) -> Path:
    """The overrides as a nested YAML config file (exercises the file path of the config loader)."""
    import yaml

    tree: dict = {}
    for item in overrides:
        key, value = item.split("=", 1)
        *sections, leaf = key.split(".")
        node = tree
        for s in sections:
            node = node.setdefault(s, {})
        node[leaf] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(tree))
    return path
