"""DDP on CPU (gloo): ``torchrun --nproc_per_node=2 -m videoformer train`` with a global batch of 4 (2 per
process) ends with the weights and metrics of one process training with batch 4."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from videoformer.engine.checkpoint import load_checkpoint
from engine_util import base_overrides, make_folder_dataset, write_config


def _run(argv: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path) -> None:
    data = make_folder_dataset(tmp_path / "data")
    extra = ["train.epochs=2", "train.optimizer=sgd", "train.lr=0.05", "train.batch_size=4"]
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "videoformer", "train",
          str(write_config(tmp_path / "one.yaml", base_overrides(data, one) + extra))])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "videoformer",
          "train", str(write_config(tmp_path / "two.yaml", base_overrides(data, two) + extra))])
    m1, m2 = ([json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] for run in (one, two))
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [6, 12]
    for a, b in zip(m1, m2):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
        assert a["train_acc"] == b["train_acc"] and a["val_top1"] == b["val_top1"]
    w1, w2 = (load_checkpoint(run / "checkpoints" / "last.pt")["model"]
              for run in (one, two))
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], rtol=1e-4, atol=1e-5, msg=key)
