"""Kill-and-resume: a training process killed with SIGKILL at arbitrary moments and restarted ends with exactly
the weights and metrics of an uninterrupted run (deterministic CPU mode, mid-epoch checkpoints)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from videoformer.engine.checkpoint import load_checkpoint
from engine_util import base_overrides, make_folder_dataset, write_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _train(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "videoformer", "train", str(config)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _final(run: Path) -> tuple[dict, str]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    return state["model"], (run / "metrics.jsonl").read_text()


def test_sigkill_and_resume_matches_uninterrupted(tmp_path: Path) -> None:
    data = make_folder_dataset(tmp_path / "data")
    extra = ["train.checkpoint_every=1", "train.epochs=3", "model.drop_path_rate=0.1"]
    ref = tmp_path / "ref"
    proc = _train(write_config(tmp_path / "ref.yaml", base_overrides(data, ref) + extra))
    assert proc.wait(timeout=120) == 0, proc.stderr.read()

    run = tmp_path / "killed"
    config = write_config(tmp_path / "killed.yaml", base_overrides(data, run) + extra)
    last = run / "checkpoints" / "last.pt"
    kills = 0
    for delay in (0.0, 0.3):  # kill right after a checkpoint appears, then somewhere between checkpoints
        proc = _train(config)
        seen = last.stat().st_mtime_ns if last.exists() else 0
        deadline = time.time() + 60
        while time.time() < deadline and (not last.exists() or last.stat().st_mtime_ns == seen):
            time.sleep(0.02)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 2, "the run finished before it could be killed twice"
    mid = load_checkpoint(last)["progress"]
    assert (mid["epoch"], mid["global_step"]) != (3, 18), "killed runs must stop before the end"
    proc = _train(config)
    out = proc.communicate(timeout=120)[1]
    assert proc.returncode == 0, out
    assert "resumed from" in out

    ref_model, ref_metrics = _final(ref)
    model, metrics = _final(run)
    assert metrics == ref_metrics
    assert ref_model.keys() == model.keys()
    for key in ref_model:
        assert torch.equal(ref_model[key], model[key]), key
