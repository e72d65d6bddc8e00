"""Epic-Kitchens: verb and noun heads on one model; the action is right when both are (ViViT §4.1)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine_util import base_overrides, make_epic_dataset
from videoformer.cli import main as cli_main
from videoformer.engine import ConfigError, load_config, train


def test_verb_noun_heads_train_eval_predict(tmp_path: Path, capsys) -> None:
    root = make_epic_dataset(tmp_path / "epic")
    run = tmp_path / "run"
    overrides = base_overrides(root, run) + ["data.format=epic", "data.train=EPIC_100_train.csv",
                                             "data.val=EPIC_100_val.csv", "train.epochs=3", "train.lr=0.005"]
    history = train(load_config(None, overrides))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    capsys.readouterr()
    assert cli_main(["eval", str(run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    verb, noun = res["heads"]
    assert res["num_videos"] == 4 and len(res["confusion"]) == 2
    assert len(res["confusion"][0]) == 3 and len(res["confusion"][1]) == 2
    assert res["top1"] == res["action_acc"] <= min(verb["top1"], noun["top1"])
    video = str(root / "P01" / "videos" / "P01_00.MP4")
    assert cli_main(["predict", str(run), video, "--json", "--views", "1x1"]) == 0
    preds = json.loads(capsys.readouterr().out)["predictions"]
    assert set(preds) == {"verb", "noun"} and {p["class"] for p in preds["noun"]} == {"n0", "n1"}
    with pytest.raises(ConfigError, match="single-head"):
        train(load_config(None, overrides + ["train.mixup_alpha=0.2", f"output_dir={tmp_path / 'mix'}"]))
