"""``videoformer eval`` / ``predict`` on a trained tiny run: multi-view metrics, skipped unreadable videos,
frame shuffling (no effect on a frame-wise model), per-file prediction errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine_util import base_overrides, make_folder_dataset
from videoformer.cli import main as cli_main
from videoformer.engine import load_config, train
from videoformer.engine.evaluate import head_metrics


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    data = make_folder_dataset(root / "data")
    out = root / "run"
    train(load_config(None, base_overrides(data, out) + ["train.epochs=2"]))
    (data / "val" / "class1" / "broken.mp4").write_bytes(b"not a video")  # unreadable: skipped, never scored
    return out


def _json(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert cli_main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_head_metrics() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    m = head_metrics(scores, torch.tensor([0, 1, 1, 2]))
    assert m.top1 == 0.75 and m.top5 == 1.0
    assert m.mean_class_acc == pytest.approx((1 + 0.5 + 1) / 3)
    assert m.confusion == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_eval_json_multiview_and_skipped(run: Path, capsys) -> None:
    one = _json(capsys, ["eval", str(run), "--json"])
    assert {"top1", "top5", "mean_class_acc", "num_videos", "skipped"} <= one.keys()
    assert one["num_videos"] == 6 and one["skipped"] == 1 and "broken.mp4" in one["errors"][0]
    assert one["top1"] > 2 / 3 and one["top5"] == 1.0 and one["views"] == "1x1"
    assert sum(map(sum, one["confusion"])) == 6
    multi = _json(capsys, ["eval", str(run / "checkpoints" / "last.pt"), "--views", "2x3", "--json"])
    assert multi["views"] == "2x3" and multi["num_videos"] == 6


def test_shuffle_frames_leaves_a_framewise_model_unchanged(run: Path, capsys) -> None:
    plain = _json(capsys, ["eval", str(run), "--json", "--views", "2x1"])
    shuffled = _json(capsys, ["eval", str(run), "--json", "--views", "2x1", "--shuffle-frames"])
    assert shuffled["shuffle_frames"] and shuffled["top1"] == plain["top1"]
    assert shuffled["confusion"] == plain["confusion"]


def test_shuffled_views_change_a_temporal_model() -> None:
    from videoformer.data.batch import RGB, Batch
    from videoformer.engine.evaluate import predict_scores
    from videoformer.models import create_model

    model = create_model("timesformer_tiny_divided", num_classes=3).eval()
    with torch.no_grad():  # at initialisation the temporal sublayers are no-ops (zero fc, zero time embedding)
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    clips = torch.randn(2, 2, 3, 4, 32, 32)  # (B, V, C, T, H, W)
    views = Batch({RGB: clips}, torch.zeros(2, dtype=torch.long), views=2)
    plain = predict_scores(model, views, [3], torch.device("cpu"))[0]
    again = predict_scores(model, views, [3], torch.device("cpu"))[0]
    shuffled = predict_scores(model, views, [3], torch.device("cpu"), shuffle=torch.Generator().manual_seed(0))[0]
    assert torch.equal(plain, again) and not torch.allclose(plain, shuffled)
    reversed_views = predict_scores(model, views.map(lambda _, v: v.flip(3)), [3], torch.device("cpu"))[0]
    framewise = create_model("vit_tiny_framewise", num_classes=3).eval()
    f_plain = predict_scores(framewise, views, [3], torch.device("cpu"))[0]
    f_shuffled = predict_scores(framewise, views, [3], torch.device("cpu"), shuffle=torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(f_plain, f_shuffled)
    assert not torch.allclose(plain, reversed_views)


def test_eval_errors(run: Path, tmp_path: Path, capsys) -> None:
    assert cli_main(["eval", str(run), "--views", "2x2"]) == 2
    assert "S 1 or 3" in capsys.readouterr().err
    assert cli_main(["eval", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["eval", str(run), "data.vall=x"]) == 2
    assert "did you mean val" in capsys.readouterr().err


def test_predict_reports_bad_files_and_predicts_the_rest(run: Path, capsys) -> None:
    data = Path(load_config(run / "config.yaml").data.root)
    good = [str(data / "val" / f"class{c}" / "v0.mp4") for c in range(3)]
    bad = str(data / "val" / "class1" / "broken.mp4")
    capsys.readouterr()
    assert cli_main(["predict", str(run), *good, bad, "/nonexistent.mp4", "--topk", "2", "--json"]) == 1
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [l["path"] for l in lines] == [*good, bad, "/nonexistent.mp4"]
    for c, line in enumerate(lines[:3]):
        preds = line["predictions"]["class"]
        assert len(preds) == 2 and preds[0]["score"] >= preds[1]["score"]
        assert preds[0]["class"] == f"class{c}"
    assert "error" in lines[3] and lines[4]["error"] == "file not found"
    assert cli_main(["predict", str(run), good[0]]) == 0
    assert capsys.readouterr().out.startswith(f"{good[0]}: class: class0")
