"""Hostile-input safety of the engine (issue 9): non-finite weights are never loaded nor written, non-finite
scores are never printed, a kill between the checkpoint writes keeps the best epoch, a full disk is one clear
line, stale temp files are removed, unreadable videos are counted over DataLoader workers, and a validation
split without one readable video is an error."""
from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine_util import base_overrides, make_folder_dataset, write_config
from videoformer.cli import main as cli_main
from videoformer.data import DatasetFailure
from videoformer.engine import TrainingDiverged, load_config, train
from videoformer.engine.checkpoint import checkpoint_path, load_checkpoint
from videoformer.fileio import WriteError, atomic_write, remove_stale_temp, temp_path
from videoformer.engine.evaluate import EvaluationError
from videoformer.engine.model import build_model, load_pretrained_weights
from videoformer.engine.predict import load_run
from videoformer.engine.train import Trainer
from videoformer.weights.common import NonFiniteWeightsError

SMALL = ["train.epochs=1"]
train_module = importlib.import_module("videoformer.engine.train")  # the package exports the function as `train`


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("safety") / "data", per_class=(4, 2))


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safety_run") / "run"
    train(load_config(None, base_overrides(data, out) + SMALL))
    return out


def _copy_run(run: Path, dest: Path, edit) -> Path:
    """A copy of ``run`` (config + last.pt) whose checkpoint state went through ``edit(state)``."""
    (dest / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.yaml", dest / "config.yaml")
    state = load_checkpoint(checkpoint_path(run, "last"))
    edit(state)
    torch.save(state, checkpoint_path(dest, "last"))
    return dest


def _nan_weights(state: dict) -> None:
    state["model"]["blocks.0.attns.0.qkv.weight"][0, :3] = float("nan")
    state["model"]["head.bias"][1] = float("inf")


def _overflowing_weights(state: dict) -> None:
    """Finite weights whose activations overflow fp32 (a corrupted file that passes the finite check)."""
    state["model"]["patch_embed.proj.weight"].fill_(3e38)


def _one_line(err: str) -> None:
    """stderr holds no traceback and the error is one line (after the run's progress lines)."""
    lines = err.replace("\r", "\n").strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("videoformer ") and sum(
        line.startswith("videoformer ") for line in lines) == 1, err


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# -- non-finite weights (item 6) -------------------------------------------------------------------------------

def test_every_load_refuses_non_finite_weights(data: Path, run: Path, tmp_path: Path, capsys) -> None:
    bad = _copy_run(run, tmp_path / "bad", _nan_weights)
    ckpt = checkpoint_path(bad, "last")
    with pytest.raises(NonFiniteWeightsError, match=r"last.pt is corrupted: 2 tensor\(s\).*qkv.weight: 3 of"):
        load_checkpoint(ckpt)
    with pytest.raises(NonFiniteWeightsError, match="head.bias"):
        load_run(bad)
    cfg = load_config(None, base_overrides(data, tmp_path / "other"))
    with pytest.raises(NonFiniteWeightsError, match="last.pt is corrupted"):  # model.pretrained
        load_pretrained_weights(build_model(cfg.model, 3), str(ckpt))
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"  # a bare state dict (rollout --weights, converters): load_checked
    save_file(load_checkpoint(checkpoint_path(run, "last"))["model"] | {"head.bias": torch.full((3,), float("nan"))},
              weights)
    from videoformer.analysis.rollout import rollout_video

    with pytest.raises(NonFiniteWeightsError, match=r"w.safetensors is corrupted.*head.bias: 3 of 3"):
        rollout_video("vit_tiny_framewise", str(next((data / "val").rglob("*.mp4"))), str(tmp_path / "ro"),
                      weights=str(weights), num_classes=3, num_frames=4, img_size=32)
    video = str(next((data / "val").rglob("*.mp4")))
    for argv in (["predict", str(bad), video, "--json"], ["eval", str(bad), "--json"]):
        capsys.readouterr()
        assert cli_main(argv) == 2
        out = capsys.readouterr()
        assert out.out == "" and "last.pt is corrupted" in out.err
        _one_line(out.err)


def test_resume_from_a_corrupted_last_says_so(data: Path, run: Path, tmp_path: Path, capsys) -> None:
    bad = _copy_run(run, tmp_path / "bad", _nan_weights)
    overrides = base_overrides(data, bad) + ["train.epochs=2"]
    capsys.readouterr()
    assert cli_main(["train", str(write_config(tmp_path / "c.yaml", overrides))]) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert "last.pt is corrupted" in err and "cannot resume" in err
    assert "good" not in err and "train.lr" not in err
    # finite but broken weights: the first step after resuming is not finite; the file is never "last good"
    broken = _copy_run(run, tmp_path / "broken", _overflowing_weights)
    with pytest.raises(TrainingDiverged, match="first step after resuming from .*last.pt") as info:
        train(load_config(None, base_overrides(data, broken) + ["train.epochs=2"]))
    assert "good" not in str(info.value)


def test_non_finite_scores_are_errors_never_nan(data: Path, run: Path, tmp_path: Path, capsys) -> None:
    broken = _copy_run(run, tmp_path / "broken", _overflowing_weights)
    video = str(data / "val" / "class0" / "v0.mp4")
    capsys.readouterr()
    assert cli_main(["predict", str(broken), video, "--json"]) == 1
    out = capsys.readouterr().out
    line = _strict_json(out)
    assert "predictions" not in line and "last.pt gives NaN / inf scores" in line["error"] and video in line["error"]
    assert cli_main(["eval", str(broken), "--json"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "last.pt gives NaN / inf scores for 6 video(s)" in out.err
    _one_line(out.err)
    # a class absent from the split has no accuracy: null in the JSON, never NaN
    (tmp_path / "val.csv").write_text("".join(f"{data}/val/class{c}/v{i}.mp4,class{c}\n" for c in (0, 1)
                                              for i in range(2)))
    assert cli_main(["eval", str(run), "data.format=csv", f"data.val={tmp_path / 'val.csv'}", "--json"]) == 0
    summary = _strict_json(capsys.readouterr().out)
    assert summary["num_videos"] == 4 and summary["per_class"][2] is None


def _diverging_trainer(data: Path, run: Path) -> Trainer:
    return Trainer(load_config(None, base_overrides(data, run) + SMALL + ["train.checkpoint_every=1"]))


def test_non_finite_gradients_stop_before_anything_is_written(data: Path, tmp_path: Path) -> None:
    trainer = _diverging_trainer(data, tmp_path / "grads")
    calls = []

    def poison(grad: torch.Tensor) -> torch.Tensor:  # the loss stays finite; the third step's gradient is not
        calls.append(1)
        return grad * float("inf") if len(calls) == 3 else grad

    trainer.model.head.weight.register_hook(poison)
    with pytest.raises(TrainingDiverged, match=r"gradient norm is (inf|nan) at epoch 1, step 3 while the loss is "
                                               r"finite.*last good checkpoint is .*last.pt"):
        trainer.fit()
    assert load_checkpoint(checkpoint_path(tmp_path / "grads", "last"))["progress"]["global_step"] == 2


def test_non_finite_weights_are_never_written(data: Path, tmp_path: Path) -> None:
    trainer = _diverging_trainer(data, tmp_path / "weights")
    real_step = trainer.optimizer.step

    def step(*args, **kwargs):  # the third step leaves a NaN weight although loss and gradients were finite
        out = real_step(*args, **kwargs)
        if trainer.steps_taken == 2:
            with torch.no_grad():
                trainer.model.head.bias[0] = float("nan")
        return out

    trainer.optimizer.step = step
    with pytest.raises(TrainingDiverged, match=r"1 tensor\(s\) hold NaN / inf \(model.head.bias\) after step 3"):
        trainer.fit()
    assert load_checkpoint(checkpoint_path(tmp_path / "weights", "last"))["progress"]["global_step"] == 2
    assert not list((tmp_path / "weights").rglob(".*.tmp*"))


# -- checkpoint writes (item 11) ------------------------------------------------------------------------------

class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, nothing after it runs."""


def _best_epoch(run: Path) -> int:
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return max(history, key=lambda r: r["val_top1"])["epoch"]  # the first epoch with the best score


def _assert_same_best(run: Path, ref: Path) -> None:
    got, want = (load_checkpoint(checkpoint_path(r, "best")) for r in (run, ref))
    assert got["progress"]["epoch"] == want["progress"]["epoch"] == _best_epoch(ref)
    for key, value in want["model"].items():
        assert torch.equal(got["model"][key], value), key


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory) -> tuple[list[str], Path]:
    """An uninterrupted deterministic 2-epoch run and its overrides (minus output_dir)."""
    ref = tmp_path_factory.mktemp("ref") / "ref"
    overrides = base_overrides(data, ref)
    train(load_config(None, overrides))
    return [o for o in overrides if not o.startswith("output_dir=")], ref


@pytest.mark.parametrize("kill", ["before best.pt", "after last.pt"])  # between: the SIGKILL test below
def test_a_kill_during_the_best_epochs_writes_keeps_the_best_epoch(reference, tmp_path: Path, monkeypatch,
                                                                     kill: str) -> None:
    overrides, ref = reference
    best_epoch = _best_epoch(ref)
    run = tmp_path / "run"
    real_save = train_module.save_checkpoint

    def save(path: Path, state: dict) -> None:
        at_best = state["progress"]["epoch"] == best_epoch and state["progress"]["step"] == 0
        if at_best and kill == "before best.pt" and path.name == "best.pt":
            raise Killed
        real_save(path, state)
        if at_best and kill == "after last.pt" and path.name == "last.pt":
            raise Killed

    monkeypatch.setattr(train_module, "save_checkpoint", save)
    with pytest.raises(Killed):
        train(load_config(None, overrides + [f"output_dir={run}"]))
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    train(load_config(None, overrides + [f"output_dir={run}"]))  # resume
    _assert_same_best(run, ref)
    assert (run / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


KILL_AFTER_BEST = """
import importlib, os, signal, sys
t = importlib.import_module("videoformer.engine.train")
real = t.save_checkpoint
def save(path, state):
    real(path, state)
    if path.name == "best.pt" and state["progress"]["epoch"] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
t.save_checkpoint = save
from videoformer.cli import main
main(["train", sys.argv[1]])
"""


def test_sigkill_right_after_best_pt_keeps_the_best_epoch(reference, tmp_path: Path) -> None:
    overrides, ref = reference
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", overrides + [f"output_dir={run}"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", KILL_AFTER_BEST, str(config), str(_best_epoch(ref))], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    train(load_config(config))
    _assert_same_best(run, ref)


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def full(f) -> None:
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError, match=r"cannot write .*x.bin: No space left on device \(disk full"):
        atomic_write(target, full)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]

    run = tmp_path / "run"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer" in obj:  # training checkpoints only
            full(f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    capsys.readouterr()
    assert cli_main(["train", str(write_config(tmp_path / "c.yaml", base_overrides(data, run) + SMALL))]) == 1
    err = capsys.readouterr().err
    _one_line(err)
    assert f"cannot write {checkpoint_path(run, 'best')}: No space left on device" in err
    assert not list(run.rglob(".*.tmp*")) and not list(run.rglob("*.pt"))


def test_stale_temp_files_of_dead_processes_are_removed(data: Path, tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = [temp_path(run / "checkpoints" / "last.pt", gone.pid), temp_path(run / "metrics.jsonl", gone.pid)]
    live = temp_path(run / "checkpoints" / "best.pt", os.getppid())  # a writer that is still running
    other = run / "checkpoints" / "notes.tmp"  # not one of ours
    for p in (*stale, live, other):
        p.write_bytes(b"x" * 100)
    assert sorted(remove_stale_temp(run, run / "checkpoints")) == sorted(stale)
    for p in stale:
        p.write_bytes(b"x")
    train(load_config(None, base_overrides(data, run) + SMALL))
    assert not any(p.exists() for p in stale) and live.exists() and other.exists()


# -- unreadable videos (items 13, 14) -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    """24 training videos of which 6 (25 %) are unreadable."""
    root = make_folder_dataset(tmp_path_factory.mktemp("damaged") / "data", per_class=(8, 1))
    for c in range(3):
        for i in (2, 5):
            (root / "train" / f"class{c}" / f"v{i}.mp4").write_bytes(b"not a video")
    return root


def test_unreadable_share_is_counted_over_workers(damaged: Path, tmp_path: Path, capsys) -> None:
    one = base_overrides(damaged, tmp_path / "w0") + SMALL + ["data.num_workers=0"]
    with pytest.raises(DatasetFailure, match=r"of \d+ training samples tried were unreadable, more than "
                                             r"data.max_fail_fraction=0.1.*v[25].mp4") as info:
        train(load_config(None, one))
    two = base_overrides(damaged, tmp_path / "w2") + SMALL + ["data.num_workers=2"]
    capsys.readouterr()
    assert cli_main(["train", str(write_config(tmp_path / "c.yaml", two))]) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert err.rstrip().endswith(f"videoformer train: {info.value}")  # the same counts with 2 workers
    tolerant = base_overrides(damaged, tmp_path / "tolerant") + SMALL + ["data.max_fail_fraction=0.4"]
    assert train(load_config(None, tolerant))[0]["skipped"] > 0


def test_no_readable_training_video_is_a_clean_error(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(data, root)
    for p in (root / "train").rglob("*.mp4"):
        p.write_bytes(b"junk")
    with pytest.raises(DatasetFailure, match=r"no training video is readable \(12 tried\); e.g. .*\.mp4"):
        train(load_config(None, base_overrides(root, tmp_path / "run") + SMALL + ["data.num_workers=2"]))


def test_an_unreadable_validation_split_is_an_error(data: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    shutil.copytree(data, root)
    videos = sorted((root / "val").rglob("*.mp4"))
    for p in videos:
        p.rename(p.with_suffix(".bak"))
        p.write_bytes(b"junk")
    run = tmp_path / "run"
    overrides = base_overrides(root, run) + SMALL
    with pytest.raises(EvaluationError, match="validation after epoch 1: no video could be scored: all 6 are "
                                              "unreadable .*the trained epoch is kept"):
        train(load_config(None, overrides))
    assert not checkpoint_path(run, "best").exists()
    kept = load_checkpoint(checkpoint_path(run, "last"))["progress"]
    assert (kept["epoch"], kept["step"]) == (0, 3)  # the trained epoch, not yet evaluated
    for p in videos:  # repaired: the run resumes, evaluates the kept epoch and chooses best.pt
        p.with_suffix(".bak").replace(p)
    history = train(load_config(None, overrides))
    assert history[0]["val_videos"] == 6 and checkpoint_path(run, "best").is_file()
    for p in videos:
        p.write_bytes(b"junk")
    capsys.readouterr()
    assert cli_main(["eval", str(run)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "no video could be scored: all 6 are unreadable" in out.err
    _one_line(out.err)
