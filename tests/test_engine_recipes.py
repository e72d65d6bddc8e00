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
    assert (cfg.data.input == "compressed") == model.input_spec.compressed
    assert all(0 < m < cfg.train.epochs for m in cfg.train.milestones)
    assert cfg.train.warmup_epochs < cfg.train.epochs
    assert cfg.output_dir == f"runs/{path.stem}"


CLASSES = {"k400": 400, "k600": 600, "epic": 97 + 300, "ssv2": 174, "ucf101": 101}


def zoo_rows() -> list[str]:
    """Markdown rows of the model zoo: recipe, model, paper, params and GMACs of one clip at the recipe's input,
    the reported accuracy (from the recipe's comment)."""
    from videoformer.analysis.flops import count_macs
    from videoformer.models import get_spec

    rows = []
    for path in CONFIGS:
        cfg = load_config(path)
        with torch.device("meta"):
            model = build_model(cfg.model, CLASSES[path.stem.rsplit("_", 1)[1]])
        shape = model.input_shapes() if hasattr(model, "input_shapes") else (3, cfg.model.num_frames,
                                                                             cfg.model.img_size, cfg.model.img_size)
        report = count_macs(model, shape)
        t, s = cfg.model.num_frames, cfg.model.img_size
        reported = next(l for l in path.read_text().splitlines() if "Reported" in l).split(": ", 1)[1]
        rows.append(f"| [{path.name}]({path.name}) | `{cfg.model.name}` | {get_spec(cfg.model.name).paper} | "
                    f"{t}×{s}² | {report.params / 1e6:.1f} | {report.gmacs:.1f} | {reported} |")
    return rows


def test_zoo_table_in_readme_matches_the_counts() -> None:
    readme = (Path(__file__).parent.parent / "configs" / "README.md").read_text()
    table = [l for l in readme.splitlines() if l.startswith("| [")]
    assert table == zoo_rows()
