"""Tensor transforms (RGB and compressed, consistent across frames and modalities) and mixup/cutmix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videoformer.data import transforms as T
from videoformer.data.mixup import Mixup, one_hot_smooth


def _clip(t=4, h=48, w=64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, t, h, w), generator=g, dtype=torch.uint8)


def test_resize_crop_flip_basics():
    x = _clip()
    assert T.short_side_scale(x, 24).shape == (3, 4, 24, 32) and T.short_side_scale(x, 24).dtype == torch.uint8
    assert T.short_side_scale(x.transpose(-1, -2), 24).shape == (3, 4, 32, 24)
    assert T.center_crop(x, 32).shape == (3, 4, 32, 32)
    torch.testing.assert_close(T.center_crop(x, 32), x[..., 8:40, 16:48])
    left, centre, right = T.three_crop(x, 48)
    torch.testing.assert_close(left, x[..., :48]) and torch.testing.assert_close(right, x[..., 16:])
    torch.testing.assert_close(centre, x[..., 8:56])
    torch.testing.assert_close(T.hflip(x)[..., 0], x[..., -1])
    with pytest.raises(ValueError, match="outside"):
        T.crop(x, 0, 40, 32, 32)
    const = torch.full((3, 2, 10, 10), 77, dtype=torch.uint8)
    assert (T.resize(const, (7, 13)) == 77).all()  # interpolation preserves constants exactly


def test_mv_resize_scales_values_and_flip_negates_dx():
    mv = torch.zeros(2, 2, 16, 16, dtype=torch.int16)  # (T, 2, H, W)
    mv[:, 0], mv[:, 1] = 4, -2
    up = T.resize(mv, (32, 64), is_mv=True)
    assert up.dtype == torch.int16 and (up[:, 0] == 16).all() and (up[:, 1] == -4).all()
    f = T.hflip(mv, is_mv=True)
    assert (f[:, 0] == -4).all() and (f[:, 1] == -2).all()
    with pytest.raises(ValueError, match="2 channels"):
        T.resize(torch.zeros(2, 3, 8, 8), (4, 4), is_mv=True)


def test_crop_params_within_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        t, l, h, w = T.random_resized_crop_params(48, 64, rng)
        assert 0 <= t and 0 <= l and t + h <= 48 and l + w <= 64 and h > 0 and w > 0
        t, l, h, w = T.scale_jitter_crop_params(48, 64, 32, rng, 0.9, 1.33)
        assert h == w and 48 / 1.33 - 1 <= h <= 48 and t + h <= 48 and l + w <= 64


def test_video_transform_is_temporally_consistent():
    frame = _clip(t=1)
    x = frame.expand(3, 6, 48, 64).contiguous()  # six identical frames
    tf = T.VideoTransform(size=32, train=True, color_jitter_prob=1.0, randaug_layers=2, randaug_magnitude=20)
    for seed in range(5):
        y = tf(x, np.random.default_rng(seed))
        assert y.shape == (3, 6, 32, 32) and y.dtype == torch.float32 and torch.isfinite(y).all()
        assert torch.equal(y[:, 0], y[:, 5])  # same crop / flip / jitter / RandAugment op on every frame
    test = T.VideoTransform(size=32, train=False)(x)
    mean = torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(T.IMAGENET_STD).view(3, 1, 1, 1)
    expected = (T.center_crop(T.short_side_scale(x, 32), 32).float() / 255 - mean) / std
    torch.testing.assert_close(test, expected)
    with pytest.raises(ValueError, match=r"\(3, T, H, W\)"):
        tf(torch.zeros(4, 3, 8, 8, dtype=torch.uint8))


def test_rand_augment_ops_change_the_clip():
    x = _clip(t=2).float() / 255
    changed = sum(not torch.equal(T.rand_augment(x, np.random.default_rng(s), 1, 20), x) for s in range(30))
    assert changed >= 20  # most single ops alter the clip (identity is 1 of 13)
    y = T.rand_augment(x, np.random.default_rng(0), 3, 30)
    assert y.min() >= 0 and y.max() <= 1


def test_compressed_transform_consistent_across_modalities():
    t, h, w = 3, 48, 64
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    iframe = torch.stack([xx, yy, xx * 0]).to(torch.uint8).expand(t, 3, h, w).contiguous()  # R = x, G = y
    residual = iframe.to(torch.int16) - 100
    mv = torch.stack([torch.full((h, w), 6), torch.full((h, w), -3)]).to(torch.int16).expand(t, 2, h, w).contiguous()
    tf = T.CompressedTransform(size=32, train=True)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        out = tf(iframe, mv, residual, rng)
        assert out["iframe"].shape == (t, 3, 32, 32) and out["mv"].shape == (t, 2, 32, 32)
        # undo normalisation: the residual crop/flip equals the I-frame's (same box for both)
        i_r = out["iframe"][:, 0] * T.IMAGENET_STD[0] + T.IMAGENET_MEAN[0]
        r_r = out["residual"][:, 0] * T.IMAGENET_STD[0] * 255 + 100
        torch.testing.assert_close(i_r * 255, r_r, atol=1.0, rtol=0)
        flipped = out["iframe"][0, 0, 0, 0] > out["iframe"][0, 0, 0, -1]  # R = x decreasing -> flipped
        dx = out["mv"][0, 0, 0, 0] * 40  # CoViAR scaling: / (2 * 20)
        assert (dx < 0) == bool(flipped)
        assert 4 <= abs(dx) <= 6  # 6 px scaled by 32 / crop side, side in [48 / 1.33, 48]
        assert out["mv"].abs().max() <= 0.5
    views = T.CompressedTransform(size=32, train=False, three_crop=True)(iframe, mv, residual)
    assert views["iframe"].shape == (3, t, 3, 32, 32) and views["mv"].shape == (3, t, 2, 32, 32)
    with pytest.raises(ValueError, match="differ"):
        tf(iframe, mv[..., :10], residual)


def test_coviar_normalisation():
    mv = torch.tensor([-50, -20, 0, 10, 20, 99], dtype=torch.int16)
    torch.testing.assert_close(T.normalize_mv(mv), torch.tensor([-0.5, -0.5, 0.0, 0.25, 0.5, 0.5]))
    res = torch.tensor([-300, 0, 127, 300], dtype=torch.int16).view(1, 4, 1, 1).expand(1, 4, 3, 1).transpose(1, 2)
    out = T.normalize_residual(res)  # (1, 3, 4, 1)
    torch.testing.assert_close(out[0, 0, :, 0], torch.tensor([-128, 0, 127, 127]) / 255 / T.IMAGENET_STD[0])


def test_one_hot_smooth_and_mixup():
    y = torch.tensor([0, 2])
    s = one_hot_smooth(y, 4, 0.2)
    torch.testing.assert_close(s.sum(1), torch.ones(2))
    assert s[0, 0] == pytest.approx(0.85) and s[0, 1] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="out of range"):
        one_hot_smooth(torch.tensor([4]), 4)
    a = torch.zeros(2, 3, 2, 8, 8)
    a[1] = 1.0
    mix = Mixup(num_classes=4, mixup_alpha=0.3, cutmix_alpha=0.0, label_smoothing=0.0)
    xm, tm = mix(a, y, np.random.default_rng(0))
    lam = 1 - xm[0].mean().item()  # sample 0 = lam * 0 + (1 - lam) * 1
    torch.testing.assert_close(tm[0], torch.tensor([lam, 0, 1 - lam, 0]), atol=1e-6, rtol=0)
    cut = Mixup(num_classes=4, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    for seed in range(10):
        xc, tc = cut(a, y, np.random.default_rng(seed))
        frac = xc[0].mean().item()  # area fraction pasted from sample 1
        torch.testing.assert_close(tc[0, 2], torch.tensor(frac), atol=1e-6, rtol=0)
        assert torch.equal(xc[0, :, 0], xc[0, :, 1])  # same box on every frame
    d = {"iframe": a, "mv": a[:, :2].clone()}
    dm, _ = cut(d, y, np.random.default_rng(3))
    assert torch.equal(dm["iframe"][:, :2], dm["mv"])  # same box for every modality
    with pytest.raises(ValueError, match="float"):
        mix(a.to(torch.uint8), y)


def test_mixup_multi_head_targets():
    a = torch.zeros(2, 3, 2, 8, 8)
    a[1] = 1.0
    y = torch.tensor([[3, 8], [6, 114]])  # Epic-Kitchens (verb, noun)
    mix = Mixup(num_classes=(97, 300), mixup_alpha=0.1, cutmix_alpha=0.0, label_smoothing=0.2)
    xm, (verb, noun) = mix(a, y, np.random.default_rng(0))
    lam = 1 - xm[0].mean().item()
    assert verb.shape == (2, 97) and noun.shape == (2, 300)
    torch.testing.assert_close(verb.sum(1), torch.ones(2)) and torch.testing.assert_close(noun.sum(1), torch.ones(2))
    assert verb[0, 3] == pytest.approx(lam * 0.8 + 0.2 / 97, abs=1e-5)
    assert noun[0, 114] == pytest.approx((1 - lam) * 0.8 + 0.2 / 300, abs=1e-5)
    with pytest.raises(ValueError, match="heads"):
        mix(a, y[:, 0])
