"""save_pretrained / ``videoformer convert`` round trips, preprocessing travelling with the weights through
train / eval / predict, Hugging Face ``preprocessor_config.json``, the model-zoo table's registry names."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from engine_util import base_overrides, make_folder_dataset
from test_weights_official import CLASSES, HEADS, SIZE, T, release_file, save_tokshift
from videoformer.cli import main as cli_main
from videoformer.data.preprocessing import Preprocessing
from videoformer.engine import load_config, train
from videoformer.engine.predict import load_run
from videoformer.models import create_model, list_models
from videoformer.models.registry import config_fields
from videoformer.weights import CheckpointError, load_pretrained, save_pretrained

ROOT = Path(__file__).resolve().parents[1]


def _same_logits(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


def test_save_pretrained_round_trips(tmp_path):
    model = create_model("msca_tiny", shift_layout="fwd_rest_back").eval()
    model.classes = [f"c{i}" for i in range(10)]
    model.save_pretrained(tmp_path / "export")
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert meta["model"] == "msca_tiny" and meta["config"]["shift_layout"] == "fwd_rest_back"
    back = load_pretrained(tmp_path / "export")
    assert back.registry_name == "msca_tiny" and back.classes == model.classes and not back.training
    assert back.preprocessing == model.preprocessing
    assert _same_logits(model, back, torch.randn(1, 3, 4, 32, 32)) == 0.0


@pytest.mark.parametrize("name", list_models("*tiny*") + ["timesformer_hr", "timesformer_l", "mvit_b_16x4"])
def test_every_registered_config_rebuilds_from_its_fields(name):
    """What save_pretrained writes (the constructor fields, through JSON) rebuilds the same config."""
    with torch.device("meta"):
        model = create_model(name)
        again = create_model(name, **json.loads(json.dumps(model.registry_config)))
    assert config_fields(again.cfg) == config_fields(model.cfg)


def test_convert_cli_round_trips(tmp_path, capsys):
    """An official file -> a videoformer directory (preprocessing, classes, conventions) -> the same model with
    no argument; converting the directory again changes nothing."""
    release_file(tmp_path / "TimeSformer_divST_8x32_224_K400.pyth", "space")
    (tmp_path / "classes.txt").write_text("".join(f"action {i}\n" for i in range(CLASSES)))
    assert cli_main(["convert", str(tmp_path / "TimeSformer_divST_8x32_224_K400.pyth"), str(tmp_path / "out"),
                     "--classes", str(tmp_path / "classes.txt"), f"num_heads={HEADS}"]) == 0
    assert "timesformer_b16_space" in capsys.readouterr().out
    original = load_pretrained(tmp_path / "TimeSformer_divST_8x32_224_K400.pyth", num_heads=HEADS)
    converted = load_pretrained(tmp_path / "out")
    assert converted.cfg.readout == "mean_tokens" and converted.cfg.pos_resize == "nearest"
    assert converted.preprocessing == original.preprocessing and converted.classes[3] == "action 3"
    x = torch.randn(2, 3, T, SIZE, SIZE)
    assert _same_logits(original, converted, x) == 0.0
    assert cli_main(["convert", str(tmp_path / "out"), str(tmp_path / "again")]) == 0
    assert (json.loads((tmp_path / "again" / "config.json").read_text())
            == json.loads((tmp_path / "out" / "config.json").read_text()))
    assert cli_main(["convert", str(tmp_path / "classes.txt"), str(tmp_path / "bad")]) == 2
    assert "not a checkpoint" in capsys.readouterr().err


def test_convert_with_overrides(tmp_path):
    save_tokshift(tmp_path / "ckpt.pth")
    assert cli_main(["convert", str(tmp_path / "ckpt.pth"), str(tmp_path / "out"), "--model", "tokenshift_tiny",
                     f"num_heads={HEADS}", "num_frames=6"]) == 0
    model = load_pretrained(tmp_path / "out")
    assert (model.cfg.num_frames, model.cfg.shift_layout, model.preprocessing.num_frames) == (6, "fwd_back", 6)
    assert model.preprocessing.mean == (0.5,) * 3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("ft") / "data", per_class=(4, 1))


def test_fine_tuning_from_an_official_release_carries_its_convention(data, tmp_path):
    """model.pretrained = a .pyth: the run's model is the release's architecture (nearest resizing), at the
    config's frames with a fresh 3-class head, normalised as the release was; eval / predict / resume of the
    run use the same preprocessing without the release file."""
    release_file(tmp_path / "release.pyth", "divided")
    out = tmp_path / "run"
    overrides = base_overrides(data, out) + ["train.epochs=1", "model.name=timesformer_tiny_divided",
                                             f"model.pretrained={tmp_path / 'release.pyth'}",
                                             f"model.overrides.num_heads={HEADS}"]
    train(load_config(None, overrides))
    saved = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert saved["overrides"]["pos_resize"] == "nearest" and saved["num_frames"] == 4
    assert saved["preprocessing"]["mean"] == [0.45] * 3 and saved["preprocessing"]["stride"] == 2  # data.stride wins
    train(load_config(None, overrides + ["train.epochs=2"]))  # resumes: the same resolved model section
    (tmp_path / "release.pyth").unlink()
    run = load_run(out)
    assert run.model.cfg.pos_resize == "nearest" and run.model.cfg.num_classes == 3
    assert run.model.preprocessing == Preprocessing.from_dict(saved["preprocessing"])
    assert load_run(out, ["data.stride=3"]).model.preprocessing.stride == 3


def test_fine_tuning_into_another_family_is_strict(data, tmp_path):
    """A checkpoint of another family than model.name loads strictly into the named model: a TimeSformer
    release into the frame-wise ViT of the config lists the keys that do not fit instead of dropping them."""
    from videoformer.weights import CheckpointMismatchError

    release_file(tmp_path / "release.pyth", "divided")
    cfg = load_config(None, base_overrides(data, tmp_path / "run") + [f"model.pretrained={tmp_path / 'release.pyth'}"])
    pattern = r"(?s)release.pyth \(a timesformer_b16_divided model\).*missing keys.*unexpected keys.*pos_embed.time"
    with pytest.raises(CheckpointMismatchError, match=pattern):
        train(cfg)


def test_preprocessing_precedence(data, tmp_path):
    """Explicit model.preprocessing keys and data.sampler / data.stride win over the weights' convention."""
    export = create_model("vit_tiny_framewise", num_classes=3)
    export.preprocessing = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, img_size=32, num_frames=4, stride=7)
    save_pretrained(export, tmp_path / "export")
    out = tmp_path / "run"
    cfg = load_config(None, [o for o in base_overrides(data, out) if not o.startswith("data.stride")]
                      + ["train.epochs=1", f"model.pretrained={tmp_path / 'export'}", "model.preprocessing.std=[1,1,1]"])
    train(cfg)
    pre = load_run(out).model.preprocessing
    assert (pre.mean, pre.std, pre.stride) == ((0.5,) * 3, (1.0,) * 3, 7)


def test_predict_and_eval_read_an_export_directly(data, tmp_path, capsys):
    model = create_model("vit_tiny_framewise", num_classes=3)
    model.classes = ["class0", "class1", "class2"]
    model.save_pretrained(tmp_path / "export")
    video = next((data / "val").rglob("*.mp4"))
    assert cli_main(["predict", str(tmp_path / "export"), str(video), "--views", "1x1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"]["class"][0]["class"].startswith("class")
    assert cli_main(["eval", str(tmp_path / "export"), f"data.root={data}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_videos"] == 3


def test_legacy_runs_keep_imagenet_statistics(data, tmp_path):
    """A run saved before weights carried preprocessing was trained with ImageNet mean / std."""
    out = tmp_path / "run"
    train(load_config(None, base_overrides(data, out) + ["train.epochs=1", "model.name=vit_tiny_framewise"]))
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    del ckpt["config"]["model"]["preprocessing"]
    torch.save(ckpt, out / "checkpoints" / "last.pt")
    assert load_run(out).model.preprocessing.mean == (0.485, 0.456, 0.406)


def test_hugging_face_preprocessor_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.VivitConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                                   image_size=32, num_frames=4, tubelet_size=[2, 8, 8], num_labels=3,
                                   id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    transformers.VivitForVideoClassification(cfg).save_pretrained(tmp_path)
    # VivitImageProcessor: x / 127.5 - 1, then (v - 0.5) / 0.5, i.e. mean 0.75, std 0.25 on [0, 1] pixels
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "VivitImageProcessor", "do_rescale": True, "rescale_factor": 1 / 127.5,
        "offset": True, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32}}))
    model = load_pretrained(tmp_path)
    pre = model.preprocessing
    assert pre.mean == pytest.approx((0.75,) * 3) and pre.std == pytest.approx((0.25,) * 3)
    assert (pre.resize, pre.img_size, pre.num_frames) == (36, 32, 4) and model.classes == ["a", "b", "c"]
    x = torch.rand(3, 1, 1)
    assert torch.allclose((x - 0.75) / 0.25, ((x * 255 / 127.5 - 1) - 0.5) / 0.5)


def test_model_zoo_table_names_are_registered():
    """Every registry name in README's model-zoo table exists, and every family has rows."""
    text = (ROOT / "README.md").read_text()
    zoo = text[text.index("## Model zoo"):]
    zoo = zoo[: zoo.index("\n## ", 4)]
    names = set(re.findall(r"^\|[^|]*\|\s*`([a-z0-9_]+)`", zoo, flags=re.M))
    assert len(names) >= 8
    missing = sorted(n for n in names if n not in list_models())
    assert not missing, f"model-zoo names not registered: {missing}"
    for family in ("TimeSformer", "TokShift", "MSCA", "ViViT", "MViT", "MM-ViT"):
        assert family in zoo


def test_timesformer_l_is_vit_base():
    """TimeSformer-L of the paper and release is ViT-B/16 on 96 frames (not ViT-L); -HR is 16 x 448²."""
    with torch.device("meta"):
        long, hr, base = (create_model(n) for n in ("timesformer_l", "timesformer_hr", "timesformer_b16_divided"))
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in (("l", long), ("hr", hr), ("b", base))}
    assert (long.cfg.dim, long.cfg.depth, long.cfg.num_frames, long.cfg.img_size) == (768, 12, 96, 224)
    assert (hr.cfg.dim, hr.cfg.num_frames, hr.cfg.img_size) == (768, 16, 448)
    assert params["l"] - params["b"] == (96 - 8) * 768  # only the time embedding grows
    assert params["hr"] - params["b"] == (28 ** 2 - 14 ** 2) * 768 + (16 - 8) * 768
    assert "timesformer_l16_divided" not in list_models()


def test_load_pretrained_refuses_an_image_vit_with_a_pointer(tmp_path):
    torch.save({k: v for k, v in create_model("vit_tiny_framewise").state_dict().items()}, tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="known formats"):
        load_pretrained(tmp_path / "vit.pth")
