"""Config: YAML + dotted overrides onto dataclasses; every mistake is a ConfigError (a ValueError) naming the key
and listing the valid choices, raised before the run directory is created or a step is taken."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine_util import base_overrides, make_folder_dataset, write_config
from videoformer.cli import main as cli_main
from videoformer.data import AnnotationError
from videoformer.engine import ConfigError, load_config, train
from videoformer.weights import CheckpointError


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("cfg") / "data", per_class=(2, 1), classes=2)


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", ["model.name=vivit_tiny_fe", "train.lr=0.5", "train.milestones=[3,6]"])
    cfg = load_config(path, ["train.lr=0.01", "model.freeze=[blocks.0,head]", "model.img_size=null",
                             "model.overrides.temporal_depth=1", "train.schedule=step", "train.deterministic=true"])
    assert cfg.model.name == "vivit_tiny_fe" and cfg.train.lr == 0.01 and cfg.train.milestones == [3, 6]
    assert cfg.model.freeze == ["blocks.0", "head"] and cfg.model.img_size is None
    assert cfg.model.overrides == {"temporal_depth": 1} and cfg.train.deterministic is True


@pytest.mark.parametrize("override, message", [
    ("train.lrr=0.1", r"unknown key 'lrr'; did you mean lr\?.*valid keys:.*momentum"),
    ("trian.lr=0.1", r"unknown key 'trian'; did you mean train\?"),
    ("train.optimizer=adam", r"train.optimizer: 'adam' is not one of sgd, adamw"),
    ("data.format=kinetic", r"data.format: 'kinetic' is not one of kinetics, ucf101, hmdb51, ssv2, epic, csv, folder"),
    ("train.epochs=many", r"train.epochs: expected an integer"),
    ("train.batch_size=0", r"train.batch_size must be >= 1"),
    ("train.schedule=step", r"train.milestones"),
    ("train", r"expected key=value"),
    ("train=3", r"'train' is a section"),
])
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=rf"{path}: .*unknown key 'epocs'; did you mean epochs"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def _fails_before_training(overrides: list[str], error: type, message: str, run: Path) -> None:
    with pytest.raises(error, match=message):
        train(load_config(None, overrides))
    assert not run.exists(), "the run directory must not be created when the config is bad"


def test_data_and_model_errors_before_training(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    ok = base_overrides(data, run)
    _fails_before_training(ok + [f"data.root={tmp_path / 'nowhere'}"], ConfigError, "does not exist", run)
    _fails_before_training(ok + ["data.val=test"], AnnotationError, "dataset folder not found", run)
    _fails_before_training(ok + ["model.name=vit_tiny_framewse"], ConfigError, "did you mean: vit_tiny_framewise", run)
    _fails_before_training(ok + ["model.overrides.depht=3"], ConfigError, r"unknown config field\(s\) \['depht'\]", run)
    _fails_before_training(ok + ["model.img_size=30"], ConfigError, "not divisible by patch_size", run)
    _fails_before_training(ok + ["model.num_classes=5"], ConfigError, "the dataset has 2 classes", run)
    _fails_before_training(ok + ["model.freeze=[blockz]"], ConfigError, "matches no parameter; top-level", run)
    _fails_before_training(ok + ["train.batch_size=64"], ConfigError, "exceeds the 4 training videos", run)
    _fails_before_training(ok + ["data.input=compressed"], ConfigError, "compressed", run)


def test_csv_label_outside_class_list(data: Path, tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(f"path,label\n{data}/train/class0/v0.mp4,cat\n{data}/train/class1/v0.mp4,dog\n")
    (tmp_path / "val.csv").write_text(f"path,label\n{data}/val/class0/v0.mp4,cow\n")
    run = tmp_path / "run"
    overrides = base_overrides(data, run) + ["data.format=csv", f"data.train={tmp_path / 'train.csv'}",
                                             f"data.val={tmp_path / 'val.csv'}", "train.batch_size=2"]
    _fails_before_training(overrides, AnnotationError, r"val.csv: line 2: label 'cow' is not one of the 2 classes", run)


def test_checkpoint_from_another_model(data: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "source"
    train(load_config(None, base_overrides(data, source) + ["train.epochs=1", "train.batch_size=2"]))
    run = tmp_path / "run"
    other = base_overrides(data, run) + [f"model.pretrained={source}", "model.name=timesformer_tiny_divided"]
    _fails_before_training(other, CheckpointError,
                           r"(?s)best.pt \(a vit_tiny_framewise run\) does not match the model.*missing keys", run)
    capsys.readouterr()
    assert cli_main(["train", str(write_config(tmp_path / "c.yaml", other))]) == 2
    err = capsys.readouterr().err
    assert "videoformer train: " in err and "missing keys" in err and "Traceback" not in err
    # the same model family loads, with the classifier kept when sizes agree
    same = base_overrides(data, tmp_path / "ok") + [f"model.pretrained={source}", "train.epochs=1",
                                                   "train.batch_size=2"]
    assert train(load_config(None, same))[0]["epoch"] == 1
