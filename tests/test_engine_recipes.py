"""Paper recipes in configs/: each loads with valid keys, names a registered model that builds at the paper's
input (on the meta device), states the reported accuracy, and has a consistent schedule."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from videoformer.engine import load_config
from videoformer.engine.model import build_model

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_there_is_a_recipe_per_paper() -> None:
    models = {load_config(p).model.name.split("_")[0] for p in CONFIGS}
    assert {"vivit", "timesformer", "mvit", "msca", "mmvit"} <= models


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe(path: Path) -> None:
    cfg = load_config(path)
    assert "Reported" in path.read_text(), "each recipe states the paper's accuracy"
    with torch.device("meta"):
        model = build_model(cfg.model, 101)
    assert (model.cfg.num_frames, model.cfg.img_size) == (cfg.model.num_frames, cfg.model.img_size)
    assert (cfg.data.input == "compressed") == hasattr(model.cfg, "modalities")
    assert all(0 < m < cfg.train.epochs for m in cfg.train.milestones)
    assert cfg.train.warmup_epochs < cfg.train.epochs
    assert cfg.output_dir == f"runs/{path.stem}"
