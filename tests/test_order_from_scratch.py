"""The small-data recipes learn frame order from scratch (issue 12) on clips made here, whose classes differ only
in the order of their frames (videoformer.data.synthetic.ORDER_PAIRS: not the demo's motions). A model that uses
the order loses its accuracy when the frames are shuffled. The full-size measurement (a few hundred clips,
every recipe, against the paper-faithful init) is benchmarks/order_from_scratch.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from videoformer.data.synthetic import order_clip, write_order_dataset
from videoformer.engine import load_config, train
from videoformer.engine.predict import evaluate_run, load_run

ROOT = Path(__file__).parent.parent


def fit_recipe(recipe: str, data: Path, out: Path, *overrides: str) -> tuple[float, float]:
    """Train ``configs/small/<recipe>.yaml`` on ``data``; top-1 of the final weights, plain and frames shuffled."""
    cfg = load_config(ROOT / "configs" / "small" / f"{recipe}.yaml",
                      [f"data.root={data}", f"output_dir={out}", "train.progress=false", "train.reports=false",
                       "train.deterministic=true", *overrides])
    train(cfg)
    run = load_run(out, checkpoint="last")
    return evaluate_run(run).top1, evaluate_run(run, shuffle_seed=0).top1


def test_order_pairs_differ_only_in_order() -> None:
    import numpy as np

    for kind in ("vertical", "size", "presence"):  # the second class is the first one played backwards
        a = order_clip(kind, False, np.random.default_rng(3), frames=8)
        b = order_clip(kind, True, np.random.default_rng(3), frames=8)
        assert np.array_equal(a[::-1], b) and not np.array_equal(a, b)
    a = order_clip("turn_back", False, np.random.default_rng(3), frames=8)
    b = order_clip("turn_back", True, np.random.default_rng(3), frames=8)  # the halves swapped: same frames
    assert np.array_equal(np.concatenate([a[4:], a[:4]]), b)
    with pytest.raises(ValueError, match="unknown order pair"):
        order_clip("left_right", False, np.random.default_rng(0))


def test_temporal_recipe_learns_order_from_scratch(tmp_path: Path) -> None:
    """Appear vs disappear and down vs up: the same frames, reversed. The transition of "presence" falls between
    two tubelets, so the model must learn it from attention and positions, not from its tubelet embedding."""
    data = Path(write_order_dataset(tmp_path / "rgb", ("presence", "vertical"), (24, 8), frames=16, size=32, seed=5))
    top1, shuffled = fit_recipe("temporal", data, tmp_path / "run", "train.epochs=8")
    assert top1 >= 0.85, top1  # a frame-wise model tops out at 0.5 (it can tell the pair, not the order)
    assert shuffled <= top1 - 0.25, (top1, shuffled)


def test_mmvit_recipe_learns_the_order_of_its_compressed_frames(tmp_path: Path) -> None:
    """Down-then-up against up-then-down from a random height: each frame's I-frame, motion vectors and residual
    are distributed alike in both classes (a square somewhere, moving up or down), so only which motion comes
    first tells the class; shuffling the frames must bring MM-ViT back to chance."""
    data = Path(write_order_dataset(tmp_path / "mpeg4", ("turn_back",), (32, 12), frames=16, size=32, seed=6,
                                    codec="mpeg4"))
    top1, shuffled = fit_recipe("mmvit", data, tmp_path / "run", "train.epochs=8")
    assert top1 >= 0.8, top1
    assert shuffled <= 0.7, shuffled
