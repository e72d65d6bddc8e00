"""Training engine: a tiny run learns; schedules; gradient accumulation; freezing; mixup and bf16 run; a NaN
loss stops the run and keeps the last good checkpoint; the run directory holds config, metrics, checkpoints."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from videoformer.engine.checkpoint import load_checkpoint
from engine_util import base_overrides, make_folder_dataset
from videoformer.cli import main as cli_main
from videoformer.engine import TrainingDiverged, load_config, train
from videoformer.engine.config import config_from_dict
from videoformer.engine.report import has_matplotlib
from videoformer.engine.schedules import LRSchedule


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("engine") / "data")


def _last(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")


def test_tiny_run_learns_and_writes_run_dir(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = load_config(None, base_overrides(data, run) + ["train.epochs=3", "train.reports=true"])
    history = train(cfg)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    losses = [r["train_loss"] for r in history]
    assert losses[-1] < 0.5 * losses[0], losses
    assert history[-1]["val_top1"] > 2 / 3 and history[-1]["val_videos"] == 6
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines == history
    assert config_from_dict(__import__("yaml").safe_load((run / "config.yaml").read_text()), "x") == cfg
    assert (run / "checkpoints" / "best.pt").is_file()
    assert _last(run)["progress"]["global_step"] == 3 * 6  # 24 videos / batch 4
    assert not list((run / "checkpoints").glob(".*.tmp*"))
    if has_matplotlib():
        assert (run / "curves.png").stat().st_size > 1000 and (run / "confusion.png").stat().st_size > 1000
    if importlib.util.find_spec("tensorboard"):
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_schedules() -> None:
    cos = LRSchedule("cosine", steps_per_epoch=10, epochs=10, warmup_epochs=1)
    assert cos.factor(0) == pytest.approx(0.1) and cos.factor(9) == pytest.approx(1.0)
    assert cos.factor(10) == pytest.approx(1.0) and cos.factor(55) == pytest.approx(0.5)
    assert cos.factor(100) == pytest.approx(0.0, abs=1e-12)
    step = LRSchedule("step", steps_per_epoch=10, epochs=30, milestones=[10, 20], gamma=0.1)
    assert [step.factor(s) for s in (99, 100, 199, 200)] == pytest.approx([1, 0.1, 0.1, 0.01])
    plateau = LRSchedule("plateau", steps_per_epoch=10, epochs=30, patience=1, gamma=0.5)
    for metric in (0.5, 0.6, 0.6, 0.55):  # two epochs without gain > patience 1: one decay
        plateau.observe(metric)
    assert plateau.factor(1000) == 0.5
    restored = LRSchedule("plateau", steps_per_epoch=10, epochs=30, patience=1, gamma=0.5)
    restored.load_state_dict(plateau.state_dict())
    assert restored.factor(0) == 0.5


def test_grad_accumulation_equals_the_large_batch(data: Path, tmp_path: Path) -> None:
    common = base_overrides(data, tmp_path) + ["train.epochs=1", "train.optimizer=sgd", "train.lr=0.1"]
    big = train(load_config(None, common + [f"output_dir={tmp_path / 'big'}", "train.batch_size=4"]))
    small = train(load_config(None, common + [f"output_dir={tmp_path / 'acc'}", "train.batch_size=2",
                                              "train.accum_steps=2"]))
    assert big[0]["step"] == small[0]["step"] == 6
    assert big[0]["train_loss"] == pytest.approx(small[0]["train_loss"], rel=1e-5)
    a, b = _last(tmp_path / "big")["model"], _last(tmp_path / "acc")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_freeze_keeps_weights_and_other_options_run(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "frozen"
    overrides = base_overrides(data, run) + ["train.epochs=1", "model.freeze=[patch_embed,blocks.0]",
                                             "train.mixup_alpha=0.2", "train.cutmix_alpha=1.0",
                                             "train.label_smoothing=0.1", "train.precision=bf16",
                                             "train.clip_grad=1.0", "train.schedule=step", "train.milestones=[1]"]
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    from videoformer.engine.train import prepare

    initial = prepare(cfg, log=False).model.state_dict()
    history = train(cfg)
    assert math.isfinite(history[0]["train_loss"])
    final = _last(run)["model"]
    frozen = [k for k in final if k.startswith(("patch_embed", "blocks.0."))]
    assert frozen and all(torch.equal(initial[k], final[k]) for k in frozen)
    assert not torch.equal(initial["head.weight"], final["head.weight"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "nan"
    overrides = base_overrides(data, run) + ["train.optimizer=sgd", "train.lr=1e30", "train.schedule=constant",
                                             "train.warmup_epochs=0", "train.checkpoint_every=1"]
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(load_config(None, overrides))
    good = _last(run)
    assert good["progress"]["step"] >= 1
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())
    assert cli_main(["train", str(_yaml(tmp_path, overrides))]) == 3
    assert "training stopped" in capsys.readouterr().err


def _yaml(tmp_path: Path, overrides: list[str]) -> Path:
    from engine_util import write_config

    return write_config(tmp_path / "cfg.yaml", overrides)
