"""The engine boundary: models state what they consume (input_spec), Batch carries RGB or compressed inputs."""
from __future__ import annotations

import pytest
import torch

from videoformer.analysis.shuffle import shuffle_frames
from videoformer.data.batch import RGB, Batch, with_views
from videoformer.models import create_model


def test_input_spec_states_frames_size_and_modalities() -> None:
    rgb = create_model("vit_tiny_framewise", num_frames=4, img_size=32).input_spec
    assert (rgb.num_frames, rgb.img_size, rgb.modalities, rgb.compressed) == (4, 32, (RGB,), False)
    mm = create_model("mmvit_tiny_merged", modalities=("residual", "iframe")).input_spec
    assert mm.compressed and mm.modalities == ("iframe", "residual")  # the model's grid order
    inputs = {"iframe": torch.zeros(1), "mv": torch.zeros(1), "residual": torch.zeros(1)}
    assert sorted(mm.select(inputs)) == ["iframe", "residual"]
    clip = torch.zeros(2, 3, 4, 32, 32)
    assert rgb.select({RGB: clip}) is clip
    with pytest.raises(ValueError, match="takes RGB clips, the batch holds"):
        rgb.select(inputs)


def test_collated_views_fold_into_the_batch_axis() -> None:
    items = [(with_views({"iframe": torch.full((3, 4, 3, 8, 8), float(i)), "audio": torch.full((4, 5), float(i))}, 3),
              torch.tensor(i)) for i in range(2)]
    batch = Batch.collate(items, index=[7, 9], views=3)
    assert len(batch) == 2 and batch.index == [7, 9]
    assert batch.inputs["iframe"].shape == (2, 3, 4, 3, 8, 8) and batch.inputs["audio"].shape == (2, 3, 4, 5)
    flat = batch.flat_views()
    assert flat.views is None and flat.inputs["audio"].shape == (6, 4, 5) and flat.flat_views() is flat
    assert torch.equal(flat.inputs["audio"][:, 0, 0], torch.tensor([0.0, 0, 0, 1, 1, 1]))  # shared by the crops
    moved = batch.to("cpu", non_blocking=True)
    assert moved.inputs["iframe"].device.type == "cpu" and torch.equal(moved.labels, torch.tensor([0, 1]))


def test_batch_shuffle_is_the_frame_shuffle_test() -> None:
    x = torch.randn(3, 3, 5, 4, 4)
    shuffled = Batch({RGB: x}, torch.zeros(3)).shuffled(torch.Generator().manual_seed(0)).inputs[RGB]
    assert torch.equal(shuffled, shuffle_frames(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(shuffled, x)
