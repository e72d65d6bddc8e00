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


def make_folder_dataset(root: Path, per_class: tuple[int, int] = (8, 2), classes: int = 3, seed: int = 0,
                        codec: str = "libx264") -> Path:
    """``root/{train,val}/<class>/<video>.mp4`` with ``per_class`` videos per class and split (``codec="mpeg4"``
    for compressed-domain input: no B-frames)."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_video(d / f"v{i}.mp4", colour_clip(c, rng), codec=codec)
    return root


def base_overrides(root: Path, out: Path) -> list[str]:
    """A tiny, fast, deterministic run on ``make_folder_dataset(root)``."""
    return [f"data.root={root}", "data.format=folder", "data.train=train", "data.val=val",
            "model.name=vit_tiny_framewise", "model.num_frames=4", "model.img_size=32", "data.stride=2",
            "train.batch_size=4", "train.epochs=2", "train.optimizer=adamw", "train.lr=0.003",
            "train.schedule=cosine", "train.warmup_epochs=0.5", "train.progress=false", "train.reports=false",
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


def make_epic_dataset(root: Path, seed: int = 0) -> Path:
    """Epic-Kitchens-100 style: long videos ``root/P01/videos/P01_0k.MP4`` and train / val CSVs of segments
    whose verb is the tint (3 classes) and whose noun is whether the frame is striped (2 classes)."""
    rng = np.random.default_rng(seed)
    header = "narration_id,participant_id,video_id,start_frame,stop_frame,verb,verb_class,noun,noun_class\n"
    rows = {"train": [], "val": []}
    for k in range(2):
        clips, segments = [], []
        for s in range(9):
            verb, noun = s % 3, (s // 3 + k) % 2
            clip = colour_clip(verb, rng)
            if noun:
                clip[:, :, ::4] = 255
            segments.append((len(clips) * 8 + 1, len(clips) * 8 + 8, verb, noun))
            clips.append(clip)
        vid = f"P01_0{k}"
        (root / "P01" / "videos").mkdir(parents=True, exist_ok=True)
        write_video(root / "P01" / "videos" / f"{vid}.MP4", np.concatenate(clips))
        for s, (a, b, verb, noun) in enumerate(segments):
            split = "val" if s % 4 == 3 else "train"
            rows[split].append(f"{vid}_{s},P01,{vid},{a},{b},v{verb},{verb},n{noun},{noun}\n")
    for split, lines in rows.items():
        (root / f"EPIC_100_{split}.csv").write_text(header + "".join(lines))
    return root
