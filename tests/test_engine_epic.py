"""Epic-Kitchens: verb and noun heads on one model; the action is right when both are (ViViT §4.1)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_util import base_overrides, make_epic_dataset
from videoformer.cli import main as cli_main
from videoformer.engine import load_config, train


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
    mixed = train(load_config(None, overrides + ["train.mixup_alpha=0.2", "train.cutmix_alpha=1.0", "train.epochs=1",
                                                 "train.label_smoothing=0.2", f"output_dir={tmp_path / 'mix'}"]))
    assert mixed[0]["train_loss"] > 0


def test_multi_head_mixup_mixes_inputs_once_with_one_lambda() -> None:
    from videoformer.data import Mixup
    from videoformer.data.batch import RGB, Batch
    from videoformer.engine.train import mix

    x = torch.rand(4, 3, 2, 8, 8)
    y = torch.tensor([[0, 1], [1, 0], [2, 1], [0, 0]])
    for cut in (0.0, 1.0):
        mixups = [Mixup(n, mixup_alpha=1.0 - cut, cutmix_alpha=cut, label_smoothing=0.0) for n in (3, 2)]
        mixed, target = mix(mixups, Batch({RGB: x}, y), [0, 1])
        assert target.shape == (4, 5) and torch.allclose(target.sum(1), torch.full((4,), 2.0))
        assert float(target[0, 0]) == pytest.approx(1.0)  # samples 0 and 3 (its partner) share verb 0
        own_verb, own_noun = target[1, 1], target[1, 3]  # sample 1 (verb 1, noun 0) with sample 2 (verb 2, noun 1)
        assert torch.isclose(own_verb, own_noun) and float(own_verb) < 1.0, "both heads use the same lambda"
        single, _ = mixups[0](x, y[:, 0], np.random.default_rng([0, 1]))
        assert torch.equal(mixed.inputs[RGB], single)
