"""Hugging Face TimeSformer / ViViT checkpoints -> videoformer: logit parity, file formats, strict checking."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from videoformer.layers import fused_attention
from videoformer.models import FramewiseViT, TimeSformer, ViViT
from videoformer.weights.common import CheckpointError, CheckpointMismatchError
from videoformer.weights import load_pretrained
from videoformer.weights.hf import config_from_hf, convert_timesformer, convert_vivit

transformers = pytest.importorskip("transformers")

B, T, SIZE, CLASSES = 2, 4, 32, 7
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, image_size=SIZE,
            num_frames=T, num_labels=CLASSES)
CASES = {
    "space_only": dict(attention_type="space_only"),
    "joint_space_time": dict(attention_type="joint_space_time", qkv_bias=False),
    "divided_space_time": dict(attention_type="divided_space_time"),
    "vivit": dict(tubelet_size=[2, 8, 8]),
}
OURS = {"space_only": FramewiseViT, "joint_space_time": TimeSformer, "divided_space_time": TimeSformer,
        "vivit": ViViT}


def hf_model(case: str) -> torch.nn.Module:
    """A random tiny HF model whose every tensor (LayerNorms, embeddings, CLS too) is random, so that a wrong
    mapping cannot hide behind default initial values."""
    torch.manual_seed(0)
    if case == "vivit":
        model = transformers.VivitForVideoClassification(transformers.VivitConfig(**TINY, **CASES[case]))
    else:
        config = transformers.TimesformerConfig(**TINY, patch_size=8, **CASES[case])
        model = transformers.TimesformerForVideoClassification(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + ("layernorm" in name and name.endswith("weight")))
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path]]:
    out = {}
    for case in CASES:
        model, directory = hf_model(case), tmp_path_factory.mktemp(case)
        model.save_pretrained(directory)
        out[case] = model, directory
    return out


def hf_logits(model: torch.nn.Module, x: torch.Tensor, case: str) -> torch.Tensor:
    with torch.no_grad():
        logits = model(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
    return logits.reshape(B, T, -1).mean(dim=1) if case == "space_only" else logits  # per-frame -> clip


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "manual"])
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_hugging_face(checkpoints, case, fused):
    hf, directory = checkpoints[case]
    ours = load_pretrained(directory)
    assert isinstance(ours, OURS[case]) and not ours.training
    x = torch.randn(B, 3, T, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), fused_attention(fused, ours):
        logits = ours(x)
    expected = hf_logits(hf, x, case)
    assert logits.shape == expected.shape == (B, CLASSES)
    assert (logits - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("layout", ["bin_hub", "bin_in_memory", "sharded"])
@pytest.mark.parametrize("case", ["divided_space_time", "vivit"])
def test_other_file_formats(checkpoints, tmp_path, case, layout):
    """pytorch_model.bin (Hub layout, and ViViT's transformers-5 in-memory names) and sharded safetensors."""
    hf, directory = checkpoints[case]
    if layout == "sharded":
        hf.save_pretrained(tmp_path, max_shard_size="100KB")
        assert (tmp_path / "model.safetensors.index.json").is_file()
    else:
        (tmp_path / "config.json").write_text((directory / "config.json").read_text())
        tensors = load_file(directory / "model.safetensors") if layout == "bin_hub" else hf.state_dict()
        torch.save(dict(tensors), tmp_path / "pytorch_model.bin")
    x = torch.randn(B, 3, T, SIZE, SIZE)
    with torch.no_grad():
        assert (load_pretrained(tmp_path)(x) - hf_logits(hf, x, case)).abs().max().item() < 1e-4


def test_mismatch_lists_missing_unexpected_and_misshaped(checkpoints, tmp_path):
    _, directory = checkpoints["divided_space_time"]
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    tensors = load_file(directory / "model.safetensors")
    del tensors["timesformer.encoder.layer.1.temporal_dense.weight"]
    tensors["timesformer.embeddings.time_embeddings"] = torch.zeros(1, T + 1, 64)
    tensors["timesformer.extra.weight"] = torch.zeros(3)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as info:
        load_pretrained(tmp_path)
    err = info.value
    assert isinstance(err, ValueError) and str(tmp_path / "model.safetensors") in str(err)
    assert err.missing == ["timesformer.encoder.layer.1.temporal_dense.weight"]
    assert err.unexpected == ["timesformer.extra.weight"]
    assert err.misshaped == {"timesformer.embeddings.time_embeddings": ((1, T, 64), (1, T + 1, 64))}


def test_vivit_qkv_shapes_checked_per_projection(checkpoints):
    _, directory = checkpoints["vivit"]
    tensors = load_file(directory / "model.safetensors")
    key = "vivit.encoder.layer.0.attention.attention.key.weight"
    tensors[key] = tensors[key][:32]
    config = config_from_hf(json.loads((directory / "config.json").read_text()))
    with pytest.raises(CheckpointMismatchError, match="key.weight: expected shape \\(64, 64\\), got \\(32, 64\\)"):
        convert_vivit(tensors, config)


def test_scheme_must_match_checkpoint(checkpoints):
    """A joint-attention state dict converted as divided: the temporal keys are reported missing."""
    _, directory = checkpoints["joint_space_time"]
    config = dataclasses.replace(config_from_hf(json.loads((directory / "config.json").read_text())), scheme="divided")
    with pytest.raises(CheckpointMismatchError, match="temporal_attention"):
        convert_timesformer(load_file(directory / "model.safetensors"), config)


@pytest.mark.parametrize("change, match", [
    ({"architectures": ["ViTForImageClassification"]}, "unsupported architecture"),
    ({"attention_type": "axial"}, "attention_type='axial'"),
    ({"hidden_act": "relu"}, "hidden_act='relu'"),
    ({"image_size": [32, 48]}, "square sizes only"),
    ({"num_frames": 5}, "not divisible by tubelet_t=2"),
    ({"hidden_size": None}, "missing field 'hidden_size'"),
])
def test_unsupported_config_names_the_file(checkpoints, tmp_path, change, match):
    case = "vivit" if "num_frames" in change else "divided_space_time"
    hf = json.loads((checkpoints[case][1] / "config.json").read_text())
    changed = {k: v for k, v in {**hf, **change}.items() if v is not None}  # None: delete the field
    (tmp_path / "config.json").write_text(json.dumps(changed))
    with pytest.raises(CheckpointError, match=match) as info:
        load_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)


def test_missing_files(tmp_path, checkpoints):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((checkpoints["vivit"][1] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no weights file"):
        load_pretrained(tmp_path)


class _Touch:
    """Unpickling this object would create a file: a stand-in for arbitrary code in a malicious checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_pickled_objects_are_never_executed(checkpoints, tmp_path):
    (tmp_path / "config.json").write_text((checkpoints["vivit"][1] / "config.json").read_text())
    marker = tmp_path / "executed"
    torch.save({"vivit.embeddings.cls_token": _Touch(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        load_pretrained(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["divided_space_time", "joint_space_time"])
def test_timesformer_resizes_like_hugging_face(checkpoints, case):
    """At another frame size Hugging Face (like the official code) resizes the positional embedding by nearest
    neighbour; the converted model carries that rule (pos_resize="nearest")."""
    hf, directory = checkpoints[case]
    ours = load_pretrained(directory)
    assert ours.cfg.pos_resize == "nearest"
    x = torch.randn(B, 3, T, 48, 48)
    with torch.no_grad():
        assert (ours(x) - hf_logits(hf, x, case)).abs().max().item() < 1e-4
