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
    # every value's range is checked before anything is built (issue 9.3, 9.12)
    ("train.clip_grad=-1", r"train.clip_grad must be >= 0, got -1.0; use train.clip_grad=null \(or 0\) to turn "
                           r"clipping off"),
    ("eval.batch_size=0", r"eval.batch_size must be >= 1, got 0"),
    ("eval.num_clips=0", r"eval.num_clips must be >= 1"),
    ("eval.num_crops=2", r"eval.num_crops: 2 is not one of 1, 3"),
    ("data.stride=0", r"data.stride must be >= 1, got 0"),
    ("model.num_frames=0", r"model.num_frames must be >= 1, got 0"),
    ("model.img_size=-32", r"model.img_size must be >= 1"),
    ("data.num_workers=-1", r"data.num_workers must be >= 0"),
    ("data.max_fail_fraction=1.5", r"data.max_fail_fraction must be in \[0, 1\], got 1.5"),
    ("data.max_fail_fraction=-0.1", r"data.max_fail_fraction must be in \[0, 1\]"),
    ("data.min_scale=2", r"data.min_scale=2.0 exceeds data.max_scale=1.33"),
    ("train.lr=-0.1", r"train.lr must be > 0"),
    ("train.lr=inf", r"train.lr: expected a finite number"),
    ("train.momentum=1.5", r"train.momentum must be in \[0, 1\]"),
    ("train.betas=[0.9,1.0]", r"train.betas\[1\] must be in \[0, 1\)"),
    ("train.betas=[0.9]", r"train.betas needs 2 values"),
    ("train.milestones=[0]", r"train.milestones\[0\] must be >= 1"),
    ("train.warmup_epochs=-1", r"train.warmup_epochs must be >= 0"),
    ("train.min_lr=1", r"train.min_lr=1.0 exceeds train.lr=0.1"),
    ("train.seed=-1", r"train.seed must be >= 0"),
    ("train.device=cuda:7", r"train.device=cuda:7: no such device on this machine; available: auto, cpu"),
    ("train.device=gpu0", r"train.device=gpu0: not a device name; available: auto, cpu"),
])
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_clip_grad_off_and_on() -> None:
    assert load_config(None, ["train.clip_grad=0"]).train.clip_grad == 0  # 0 and null: no clipping
    assert load_config(None, ["train.clip_grad=null"]).train.clip_grad is None
    assert load_config(None, ["train.clip_grad=1.5"]).train.clip_grad == 1.5


def test_every_number_declares_its_range() -> None:
    """Validation is systematic: every numeric field of every section (list elements included) carries its
    Range or is a Literal, so a new field cannot slip through unchecked."""
    import dataclasses
    import typing

    from videoformer.engine.config import Config, Range

    def unchecked(tp) -> bool:
        if typing.get_origin(tp) is typing.Annotated:
            return not any(isinstance(m, Range) for m in tp.__metadata__) and unchecked(typing.get_args(tp)[0])
        return tp in (int, float) or any(unchecked(a) for a in typing.get_args(tp))

    config = Config()
    sections = [f.name for f in dataclasses.fields(config) if dataclasses.is_dataclass(getattr(config, f.name))]
    assert sections == ["model", "data", "train", "eval"]
    for section in sections:
        hints = typing.get_type_hints(type(getattr(config, section)), include_extras=True)
        missing = [name for name, tp in hints.items() if unchecked(tp)]
        assert not missing, f"{section}: {missing} have no declared range"


def test_a_bad_value_fails_before_the_run_starts(data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", base_overrides(data, run))
    assert cli_main(["train", str(config), "eval.batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert err == "videoformer train: eval.batch_size must be >= 1, got 0\n" and not run.exists()
    assert cli_main(["train", str(config), "train.device=cuda:7"]) == 2
    assert "available: auto, cpu" in capsys.readouterr().err and not run.exists()


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
