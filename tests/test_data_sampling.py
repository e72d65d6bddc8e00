"""Sampler tests: TSN segments, dense T x tau, multi-view K x 3 crops."""

from __future__ import annotations

import numpy as np
import pytest

from videoformer.data.sampling import dense_indices, multiview_indices, spatial_crop_offsets, uniform_indices


def test_uniform_test_takes_segment_centres():
    np.testing.assert_array_equal(uniform_indices(80, 8, train=False), np.arange(8) * 10 + 5)


def test_uniform_train_one_random_frame_per_segment():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = uniform_indices(83, 8, train=True, rng=rng)
        bounds = np.floor(np.linspace(0, 83, 9)).astype(int)
        seg = np.searchsorted(bounds, idx, side="right") - 1
        np.testing.assert_array_equal(seg, np.arange(8))  # exactly one per segment, in order
        seen.update(idx.tolist())
    assert len(seen) > 60  # offsets really are random


@pytest.mark.parametrize("n", [1, 3, 7])
def test_uniform_fewer_frames_than_segments_repeats_in_range(n):
    for train in (True, False):
        idx = uniform_indices(n, 8, train=train, rng=np.random.default_rng(0))
        assert idx.shape == (8,) and idx.min() >= 0 and idx.max() <= n - 1
        assert (np.diff(idx) >= 0).all()


def test_dense_train_random_start_and_test_centre():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(300):
        idx = dense_indices(100, 8, 4, train=True, rng=rng)
        np.testing.assert_array_equal(np.diff(idx), 4)
        assert idx[0] >= 0 and idx[-1] <= 99
        starts.add(int(idx[0]))
    assert min(starts) == 0 and max(starts) == 100 - 29 and len(starts) > 40
    assert dense_indices(100, 8, 4, train=False)[0] == (100 - 29) // 2


def test_dense_multi_clip_spread_and_overflow_policies():
    firsts = [dense_indices(100, 8, 4, False, clip_idx=k, num_clips=4)[0] for k in range(4)]
    assert firsts == [0, 24, 47, 71]
    np.testing.assert_array_equal(dense_indices(10, 4, 4, False, overflow="pad"), [0, 4, 8, 9])
    np.testing.assert_array_equal(dense_indices(10, 4, 4, False, overflow="loop"), [0, 4, 8, 2])
    with pytest.raises(ValueError):
        dense_indices(10, 4, 0, False)
    with pytest.raises(ValueError):
        dense_indices(10, 4, 1, False, overflow="wrap")


def test_three_crops_along_longer_side():
    assert spatial_crop_offsets(224, 398, 224) == [(0, 0), (0, 87), (0, 174)]  # left, centre, right
    assert spatial_crop_offsets(300, 224, 224) == [(0, 0), (38, 0), (76, 0)]  # portrait: top..bottom
    assert spatial_crop_offsets(256, 340, 224, num_crops=1) == [(16, 58)]
    with pytest.raises(ValueError, match="larger"):
        spatial_crop_offsets(200, 300, 224)


def test_multiview_k_clips_times_three_crops():
    views = multiview_indices(250, 16, 2, num_clips=4, height=224, width=300, crop_size=224)
    assert len(views) == 12
    assert {(v.clip_idx, v.crop_idx) for v in views} == {(k, c) for k in range(4) for c in range(3)}
    assert [v.left for v in views[:3]] == [0, 38, 76]
    assert views[0].indices[0] == 0 and views[-1].indices[-1] == 249
