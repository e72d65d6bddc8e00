"""A checkpoint is data, never code: every reader of the library (predict, eval, ``model.pretrained``, resume,
``rollout --weights``) refuses a pickled object instead of constructing it, and a checkpoint that ``train``
wrote loads everywhere with ``weights_only=True``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine_util import base_overrides, make_folder_dataset
from videoformer.analysis.rollout import rollout_video
from videoformer.cli import main as cli_main
from videoformer.engine import load_config, train
from videoformer.engine.checkpoint import load_checkpoint, rng_state, set_rng_state
from videoformer.engine.model import build_model, load_pretrained_weights
from videoformer.engine.predict import load_run
from videoformer.weights import CheckpointError


class _Touch:
    """Unpickling this object would create a file: a stand-in for arbitrary code in a malicious checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("safety")
    data = make_folder_dataset(root / "data", per_class=(4, 1))
    out = root / "run"
    train(load_config(None, base_overrides(data, out) + ["train.epochs=1"]))
    return data, out


def _poison(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of ``run`` whose ``last.pt`` is the real checkpoint plus one pickled object."""
    bad = tmp_path / "bad_run"
    (bad / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "executed"
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    state["payload"] = _Touch(marker)
    torch.save(state, bad / "checkpoints" / "last.pt")
    (bad / "config.yaml").write_text((run / "config.yaml").read_text())
    return bad, marker


def test_training_checkpoint_is_weights_only_loadable(run) -> None:
    _, out = run
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "rng", "config"} <= state.keys()


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    import random

    import numpy as np

    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want


def test_every_reader_refuses_a_pickle_payload(run, tmp_path: Path) -> None:
    data, out = run
    bad, marker = _poison(out, tmp_path)
    ckpt = bad / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match="last.pt"):
        load_run(bad)
    cfg = load_config(None, base_overrides(data, tmp_path / "other"))
    with pytest.raises(CheckpointError, match="pickled"):
        load_pretrained_weights(build_model(cfg.model, 3), str(ckpt))
    with pytest.raises(CheckpointError, match="last.pt"):
        rollout_video("vit_tiny_framewise", str(next((data / "val").rglob("*.mp4"))), str(tmp_path / "ro"),
                      weights=str(ckpt), num_classes=3, num_frames=4, img_size=32)
    with pytest.raises(CheckpointError, match="last.pt"):  # resume
        train(load_config(None, base_overrides(data, bad)))
    assert cli_main(["predict", str(bad), str(next((data / "val").rglob("*.mp4")))]) != 0
    assert cli_main(["eval", str(bad)]) != 0
    assert not marker.exists()


def test_rollout_reads_a_checkpoint_that_train_wrote(run, tmp_path: Path) -> None:
    data, out = run
    video = next((data / "val").rglob("*.mp4"))
    paths = rollout_video("vit_tiny_framewise", str(video), str(tmp_path / "ro"),
                          weights=str(out / "checkpoints" / "last.pt"), num_classes=3, num_frames=4, img_size=32)
    assert paths and all(Path(p).is_file() for p in paths)
