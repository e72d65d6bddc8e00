"""Compressed-domain input (MM-ViT): I-frame / motion-vector / residual samples from MPEG-4 videos train an
MM-ViT, and eval / predict take the same path (1xS views, frame shuffling shared across modalities)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine_util import base_overrides, make_folder_dataset
from videoformer.cli import main as cli_main
from videoformer.engine import ConfigError, load_config, train
from videoformer.data.batch import Batch


def test_shuffle_modalities_shares_the_frame_order() -> None:
    t = torch.arange(2 * 5, dtype=torch.float32).view(2, 5)
    x = {"iframe": t[:, :, None, None, None].expand(2, 5, 3, 2, 2), "audio": t[:, :, None].expand(2, 5, 4)}
    y = Batch(x, torch.zeros(2)).shuffled(torch.Generator().manual_seed(0)).inputs
    assert torch.equal(y["iframe"][:, :, 0, 0, 0], y["audio"][:, :, 0])
    assert torch.equal(y["audio"][:, :, 0].sort(dim=1).values, t) and not torch.equal(y["audio"][:, :, 0], t)


def test_mmvit_trains_on_compressed_videos(tmp_path: Path, capsys) -> None:
    data = make_folder_dataset(tmp_path / "data", per_class=(4, 2), codec="mpeg4")
    run = tmp_path / "run"
    overrides = base_overrides(data, run) + [
        "data.input=compressed", "model.name=mmvit_tiny_merged", "model.overrides.modalities=[iframe,mv,residual]",
        "train.epochs=2", "train.batch_size=4"]
    history = train(load_config(None, overrides))
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["val_videos"] == 6
    capsys.readouterr()
    assert cli_main(["eval", str(run), "--json", "--views", "1x3", "--shuffle-frames"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["num_videos"] == 6 and res["views"] == "1x3" and res["skipped"] == 0
    assert cli_main(["predict", str(run), str(data / "val" / "class0" / "v0.mp4"), "--json"]) == 0  # 1x3
    assert len(json.loads(capsys.readouterr().out)["predictions"]["class"]) == 3
    assert cli_main(["eval", str(run), "--views", "2x3"]) == 2
    assert "one TSN clip" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="takes compressed-domain modalities"):
        train(load_config(None, overrides + ["data.input=rgb", f"output_dir={tmp_path / 'x'}"]))
