"""What a newcomer meets first (issue 12): `init-config`, the messages for mistyped keys, `--help` without
importing torch, `eval --checkpoint`, `rollout` of a run, a complete run saying so, Ctrl-C writing a resumable
checkpoint, `train.threads`, warnings once per dataset."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from engine_util import base_overrides, make_folder_dataset, write_config
from videoformer.cli import build_parser, main
from videoformer.engine import ConfigError, Config, load_config, train

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("newcomer") / "data", per_class=(4, 2), classes=2)


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("newcomer_run") / "run"
    train(load_config(None, base_overrides(data, out)))
    return out


def test_help_does_not_import_torch() -> None:
    code = ("import sys, time; t = time.perf_counter(); from videoformer.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'videoformer --help imported torch'\n"
            "print(time.perf_counter() - t, file=sys.stderr)")
    for command in (["-c", code], ["-m", "videoformer", "train", "--help"]):
        proc = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "videoformer", "--help"], cwd=ROOT, capture_output=True, timeout=60)
    assert time.perf_counter() - start < 5  # < 0.2 s on an idle machine; the bound leaves room for a busy one


def test_help_names_only_files_that_exist() -> None:
    parser = build_parser()
    texts = [parser.format_help()] + [p.format_help() for p in parser._subparsers._group_actions[0].choices.values()]
    named = {w.strip("`',.()") for t in texts for w in t.split() if w.startswith(("configs/", "`configs/"))}
    assert named, "the help texts name example configs"
    for path in named:
        assert (ROOT / path).is_file(), f"--help names {path}, which does not exist"


@pytest.mark.parametrize("override, message", [
    ("train.learning_rate=0.1", r"unknown key 'learning_rate'; did you mean lr\?"),
    ("lr=0.1", r"unknown key 'lr'; did you mean train.lr\?"),
    ("epochs=3", r"did you mean train.epochs\?"),
    ("model.time_embed_std=0.5", r"did you mean model.overrides.time_embed_std"),
    ("data.batch_size=4", r"did you mean train.batch_size, eval.batch_size\?"),
])
def test_mistyped_keys_name_the_right_one(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_init_config_lists_every_key_with_its_comment(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "my_run.yaml"
    assert main(["init-config", "vivit_tiny_joint", "--data", str(data), "--out", str(out)]) == 0
    text = out.read_text()
    assert "peak learning rate" in text and "one of sgd, adamw" in text and "# --- train" in text
    tree = yaml.safe_load(text)
    for section, values in Config().to_dict().items():  # every key, nothing else
        assert (set(tree[section]) == set(values)) if isinstance(values, dict) else section in tree
    cfg = load_config(out)
    assert cfg.model.name == "vivit_tiny_joint" and cfg.data.root == str(data.resolve())
    assert cfg.output_dir == f"runs/vivit_tiny_joint_{data.name}"
    assert main(["init-config", "vivit_tiny_joint", "--data", str(data), "--out", str(out)]) == 2  # no overwrite
    assert "--force" in capsys.readouterr().err
    # a recipe keeps its values; MM-ViT reads the compressed domain
    assert main(["init-config", str(ROOT / "configs/small/mmvit.yaml"), "--data", str(data)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["input"] == "compressed" and printed["model"]["name"].startswith("mmvit")


def test_init_config_explains_a_wrong_layout(tmp_path: Path, capsys) -> None:
    (tmp_path / "flat" / "cats").mkdir(parents=True)
    (tmp_path / "flat" / "cats" / "a.mp4").write_bytes(b"")
    assert main(["init-config", "vivit_tiny_joint", "--data", str(tmp_path / "flat")]) == 2
    err = capsys.readouterr().err
    assert "no train/ and val/ split" in err and len(err.strip().splitlines()) == 1
    assert main(["init-config", "vivit_tiny_joint", "--data", str(tmp_path / "missing")]) == 2
    assert main(["init-config", "vivit_tiny_jiont", "--data", str(tmp_path / "flat")]) == 2


def test_extract_on_a_mistyped_folder_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["extract", str(tmp_path / "my_vidoes"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "my_vidoes" in err and "Traceback" not in err


def test_eval_names_the_checkpoint_and_how_it_was_chosen(run: Path, capsys) -> None:
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "best.pt" in out and "validation split" in out and "optimistic" in out
    assert main(["eval", str(run), "--checkpoint", "last", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["checkpoint"].endswith("last.pt") and res["classes"] == ["class0", "class1"]
    assert res["checkpoint_note"].startswith("last.pt (epoch 2 of 2)")


def test_rollout_of_a_run(run: Path, data: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    video = data / "val" / "class0" / "v0.mp4"
    assert main(["rollout", str(run), str(video), "--out", str(tmp_path / "ro")]) == 0
    paths = capsys.readouterr().out.split()
    assert paths and all(Path(p).is_file() for p in paths)
    assert main(["rollout", str(run), str(video), "--weights", "x.pt"]) == 2  # a run brings its own weights


def test_a_complete_run_says_so(run: Path, data: Path, capsys) -> None:
    history = train(load_config(None, base_overrides(data, run)))
    assert len(history) == 2
    err = capsys.readouterr().err
    assert "is complete: 2 of 2 epochs" in err and "train.epochs" in err and "step 0" not in err


def test_ctrl_c_writes_a_resumable_checkpoint(data: Path, tmp_path: Path, capfd) -> None:
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", base_overrides(data, out) + ["train.epochs=50", "train.batch_size=2",
                                                                            "data.num_workers=1"])
    proc = subprocess.Popen([sys.executable, "-m", "videoformer", "train", str(config)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "checkpoints" / "last.pt").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)  # the first epoch has ended: the loop runs
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "the same command resumes" in err
    stopped = [l for l in err.splitlines() if l.startswith("videoformer train: stopped after")]
    assert len(stopped) == 1
    from videoformer.engine.checkpoint import load_checkpoint

    progress = load_checkpoint(out / "checkpoints" / "last.pt")["progress"]
    assert progress["epoch"] < 50
    history = train(load_config(config, [f"train.epochs={progress['epoch'] + 1}"]))  # one more epoch, resumed
    assert len(history) == progress["epoch"] + 1 and "resumed from" in capfd.readouterr().err


def test_threads_default_to_physical_cores(data: Path, tmp_path: Path) -> None:
    import torch

    from videoformer.engine.threads import default_threads, physical_cores

    cores = physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert default_threads(0) == cores and default_threads(cores + 4) == 1
    assert default_threads(0, local_processes=cores) == 1
    before = torch.get_num_threads()
    try:
        train(load_config(None, base_overrides(data, tmp_path / "t") + ["train.threads=1", "train.epochs=1"]))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="train.threads must be >= 1"):
        load_config(None, ["train.threads=0"])


def test_compressed_warnings_once_per_dataset(tmp_path: Path, caplog) -> None:
    from videoformer.data import VideoRecord
    from videoformer.data import errors
    from videoformer.data.datasets import CompressedVideoDataset
    from videoformer.data.synthetic import moving_square_frames, write_video

    path = write_video(tmp_path / "b.mp4", moving_square_frames(t=24, h=32, w=32), max_b_frames=2)
    errors._WARNED.clear()
    with caplog.at_level(logging.WARNING):
        ds = CompressedVideoDataset([VideoRecord(path, 0)] * 4, num_segments=4, audio=True)
        CompressedVideoDataset([VideoRecord(path, 0)] * 4, num_segments=4, audio=True)  # the val split
        for i in range(4):
            ds[i]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("B-frames" in w for w in warnings) == 1 and sum("VGGish" in w for w in warnings) == 1, warnings
    assert any("videoformer extract" in w for w in warnings) and any("data.audio_weights" in w for w in warnings)
