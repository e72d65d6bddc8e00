"""Clip transforms on tensors (no torchvision).

Spatial ops act on the last two dims, so they work for RGB clips ``(C, T, H, W)`` (the model layout)
and for compressed modalities ``(T, C, H, W)``. Random ops draw their parameters once per clip, so
every frame - and, through :class:`CompressedTransform`, the I-frame, motion vectors and residual of
one clip - get the same crop / flip / jitter (ViViT appendix A: temporally consistent augmentation).
Resizing a motion-vector field scales its values with it; a horizontal flip negates dx.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from videoformer.data.sampling import spatial_crop_offsets
from videoformer.settings import Augment

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "resize", "short_side_scale", "crop", "center_crop", "three_crop",
    "hflip", "random_resized_crop_params", "scale_jitter_crop_params", "normalize", "color_jitter",
    "rand_augment", "normalize_mv", "normalize_residual", "VideoTransform", "CompressedTransform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check(x: torch.Tensor, name: str = "clip") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        raise ValueError(f"{name}: expected a tensor (..., H, W), got {type(x).__name__} "
                         f"{tuple(getattr(x, 'shape', ()))}")


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", is_mv: bool = False) -> torch.Tensor:
    """Resize (..., H, W) to ``size`` = (h, w). uint8 stays uint8 (rounded). ``is_mv``: nearest
    interpolation and (dx, dy) scaled by (w'/w, h'/h); channel dim must be -3 with 2 channels."""
    _check(x)
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    lead = x.shape[:-2]
    y = x.reshape(-1, 1, h, w).float()
    if is_mv:
        y = F.interpolate(y, size=size, mode="nearest")
    else:
        y = F.interpolate(y, size=size, mode=mode, align_corners=False, antialias=mode in ("bilinear", "bicubic"))
    y = y.reshape(*lead, *size)
    if is_mv:
        if x.shape[-3] != 2:
            raise ValueError(f"motion vectors need 2 channels at dim -3, got shape {tuple(x.shape)}")
        scale = torch.tensor([size[1] / w, size[0] / h]).view(2, 1, 1)
        y = torch.round(y * scale)
    if x.dtype == torch.uint8:
        return y.round().clamp(0, 255).to(torch.uint8)
    return y.to(x.dtype) if x.dtype.is_floating_point or is_mv else y.round().to(x.dtype)


def short_side_scale(x: torch.Tensor, size: int, is_mv: bool = False) -> torch.Tensor:
    """Scale so the shorter side is ``size`` (aspect ratio kept)."""
    h, w = x.shape[-2:]
    if h <= w:
        new = (size, max(1, int(round(w * size / h))))
    else:
        new = (max(1, int(round(h * size / w))), size)
    return resize(x, new, is_mv=is_mv)


def crop(x: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if top < 0 or left < 0 or top + height > h or left + width > w:
        raise ValueError(f"crop ({top}, {left}, {height}, {width}) outside a {h}x{w} frame")
    return x[..., top : top + height, left : left + width]


def center_crop(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    return crop(x, (h - th) // 2, (w - tw) // 2, th, tw)


def three_crop(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Left / centre / right (top / centre / bottom for portrait) square crops along the longer side."""
    return [crop(x, t, l, size, size) for t, l in spatial_crop_offsets(*x.shape[-2:], size, 3)]


def hflip(x: torch.Tensor, is_mv: bool = False) -> torch.Tensor:
    """Horizontal flip; for motion vectors (channel dim -3 = (dx, dy)) dx is negated."""
    y = x.flip(-1)
    if is_mv:
        y = y.clone()
        y[..., 0, :, :] = -y[..., 0, :, :]
    return y


def random_resized_crop_params(h: int, w: int, rng: np.random.Generator, scale=(0.08, 1.0),
                               ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Inception-style crop box (top, left, height, width): area fraction in ``scale``, aspect
    ratio log-uniform in ``ratio``; falls back to the central crop after 10 tries."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    ar = w / h
    if ar < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif ar > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def scale_jitter_crop_params(h: int, w: int, size: int, rng: np.random.Generator,
                             min_scale: float = 0.9, max_scale: float = 1.33) -> tuple[int, int, int, int]:
    """ViViT scale jitter (Table 7: 0.9-1.33) + random crop: the box (in input pixels) that, resized to
    ``size``, equals scaling the short side to ``size * s`` then cropping ``size`` at random.
    Scales below 1 (a box larger than the short side) are clipped to the whole short side (no padding)."""
    s = rng.uniform(min_scale, max_scale)
    side = min(h, w) / s  # crop side in input pixels
    side = int(min(round(side), h, w))
    return int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1)), side, side


def normalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
              channel_dim: int = 0) -> torch.Tensor:
    """uint8 -> float in [0, 1] then (x - mean) / std over ``channel_dim``."""
    y = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    shape = [1] * y.dim()
    shape[channel_dim] = -1
    return (y - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def _gray(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    wts = torch.tensor([0.299, 0.587, 0.114]).view([-1 if d == channel_dim % x.dim() else 1 for d in range(x.dim())])
    return (x * wts).sum(dim=channel_dim, keepdim=True)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: float) -> torch.Tensor:
    return (b + factor * (a - b)).clamp(0.0, 1.0)


def color_jitter(x: torch.Tensor, rng: np.random.Generator, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, channel_dim: int = 0) -> torch.Tensor:
    """Brightness / contrast / saturation jitter in random order, one set of factors for the clip.
    Input float in [0, 1] (or uint8, converted)."""
    y = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    for op in rng.permutation(3):
        if op == 0 and brightness:
            y = _blend(y, torch.zeros_like(y), rng.uniform(1 - brightness, 1 + brightness))
        elif op == 1 and contrast:
            y = _blend(y, _gray(y, channel_dim).mean().expand_as(y), rng.uniform(1 - contrast, 1 + contrast))
        elif op == 2 and saturation:
            y = _blend(y, _gray(y, channel_dim).expand_as(y), rng.uniform(1 - saturation, 1 + saturation))
    return y


def _affine(y: torch.Tensor, theta: torch.Tensor, fill: float = 0.5) -> torch.Tensor:
    """Apply a 2x3 affine (normalised coordinates) to (..., H, W) frames, one matrix for all."""
    lead, (h, w) = y.shape[:-2], y.shape[-2:]
    flat = y.reshape(-1, 1, h, w)
    grid = F.affine_grid(theta.expand(flat.shape[0], 2, 3), list(flat.shape), align_corners=False)
    out = F.grid_sample(flat - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return out.reshape(*lead, h, w)


def rand_augment(x: torch.Tensor, rng: np.random.Generator, num_layers: int = 2, magnitude: int = 15,
                 channel_dim: int = 0, max_magnitude: float = 30.0) -> torch.Tensor:
    """RandAugment (Cubuk et al.) with the same ops and magnitudes on every frame of the clip.

    ViViT Table 7 uses 2 layers at magnitude 15 (EK) / 20 (SSv2) on a 0-30 scale (TF ``augment.py``).
    Ops: identity, autocontrast, equalise-free contrast, brightness, colour, sharpness, posterise,
    solarise, rotate, shear x / y, translate x / y (signs random). Input float [0, 1] or uint8.
    """
    y = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    m = magnitude / max_magnitude
    h, w = y.shape[-2:]
    ops = ["identity", "autocontrast", "contrast", "brightness", "color", "sharpness", "posterize",
           "solarize", "rotate", "shear_x", "shear_y", "translate_x", "translate_y"]
    for _ in range(num_layers):
        op = ops[int(rng.integers(len(ops)))]
        sign = 1.0 if rng.random() < 0.5 else -1.0
        enhance = 1.0 + sign * 0.9 * m
        if op == "autocontrast":
            dims = [d for d in range(y.dim()) if d != channel_dim % y.dim()]
            lo, hi = y.amin(dim=dims, keepdim=True), y.amax(dim=dims, keepdim=True)
            y = torch.where(hi > lo, (y - lo) / (hi - lo).clamp_min(1e-6), y)
        elif op == "contrast":
            y = _blend(y, _gray(y, channel_dim).mean().expand_as(y), enhance)
        elif op == "brightness":
            y = _blend(y, torch.zeros_like(y), enhance)
        elif op == "color":
            y = _blend(y, _gray(y, channel_dim).expand_as(y), enhance)
        elif op == "sharpness":
            k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
            flat = y.reshape(-1, 1, h, w)
            smooth = F.conv2d(F.pad(flat, (1, 1, 1, 1), mode="replicate"), k.view(1, 1, 3, 3)).reshape(y.shape)
            y = _blend(y, smooth, enhance)
        elif op == "posterize":
            bits = max(1, int(round(8 - 4 * m)))
            y = torch.floor(y * 255.0 / 2 ** (8 - bits)) * 2 ** (8 - bits) / 255.0
        elif op == "solarize":
            thr = 1.0 - m
            y = torch.where(y >= thr, 1.0 - y, y)
        elif op == "rotate":
            a = math.radians(sign * 30.0 * m)
            theta = torch.tensor([[math.cos(a), -math.sin(a) * h / w, 0.0], [math.sin(a) * w / h, math.cos(a), 0.0]])
            y = _affine(y, theta)
        elif op in ("shear_x", "shear_y"):
            s = sign * 0.3 * m
            theta = torch.tensor([[1.0, s * h / w, 0.0], [0.0, 1.0, 0.0]]) if op == "shear_x" else \
                torch.tensor([[1.0, 0.0, 0.0], [s * w / h, 1.0, 0.0]])
            y = _affine(y, theta)
        elif op in ("translate_x", "translate_y"):
            t = sign * 2 * 0.45 * m  # up to 45 % of the side (normalised coordinates span 2)
            theta = torch.tensor([[1.0, 0.0, t if op == "translate_x" else 0.0],
                                  [0.0, 1.0, t if op == "translate_y" else 0.0]])
            y = _affine(y, theta)
    return y.clamp(0.0, 1.0)


def normalize_mv(mv: torch.Tensor, bound: float = 20.0) -> torch.Tensor:
    """CoViAR motion-vector normalisation: clip to +-``bound`` px, scale to [-0.5, 0.5]."""
    return mv.float().clamp(-bound, bound) / (2.0 * bound)


def normalize_residual(res: torch.Tensor, std: Sequence[float] = IMAGENET_STD, channel_dim: int = -3) -> torch.Tensor:
    """CoViAR residual normalisation: clip to [-128, 127], / 255, divide by the per-channel std."""
    shape = [1] * res.dim()
    shape[channel_dim] = -1
    return (res.float().clamp(-128, 127) / 255.0) / torch.tensor(std).view(shape)


@dataclass
class VideoTransform(Augment):
    """RGB clip pipeline on uint8 (C, T, H, W) -> float normalised (C, T, size, size).

    Train: the :class:`~videoformer.settings.Augment` fields (keyword-only): scale jitter (``min_scale``-
    ``max_scale`` of the short side, ViViT) or random resized crop, flip, optional colour jitter and
    RandAugment. Test (the spatial half of multi-view testing, ViViT §4.1; the
    temporal half is ``VideoDataset``'s clips, see :func:`~videoformer.data.sampling.multiview_indices`):
    short-side scale to ``short_side`` (default ``size``) then centre crop, or with ``three_crop=True``
    left / centre / right crops stacked as (3, C, T, size, size).
    """

    size: int = 224
    train: bool = True
    three_crop: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    short_side: int | None = None  # test mode: the short side before cropping (None: ``size``)

    def __call__(self, clip: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        if clip.dim() != 4 or clip.shape[0] != 3:
            raise ValueError(f"expected a (3, T, H, W) clip, got {tuple(clip.shape)}")
        rng = rng or np.random.default_rng()
        h, w = clip.shape[-2:]
        if self.train:
            if self.crop == "random_resized":
                box = random_resized_crop_params(h, w, rng)
            else:
                box = scale_jitter_crop_params(h, w, self.size, rng, self.min_scale, self.max_scale)
            x = resize(crop(clip, *box), (self.size, self.size))
            if rng.random() < self.flip_prob:
                x = hflip(x)
            x = x.float() / 255.0
            if rng.random() < self.color_jitter_prob:
                x = color_jitter(x, rng)
            if self.randaug_layers:
                x = rand_augment(x, rng, self.randaug_layers, self.randaug_magnitude)
        elif self.three_crop:
            views = three_crop(short_side_scale(clip, self.short_side or self.size), self.size)
            return torch.stack([normalize(v.float() / 255.0, self.mean, self.std, channel_dim=0) for v in views])
        else:
            x = center_crop(short_side_scale(clip, self.short_side or self.size), self.size).float() / 255.0
        return normalize(x, self.mean, self.std, channel_dim=0)


@dataclass
class CompressedTransform:
    """One spatial pipeline for the I-frame (T, 3, H, W) uint8, MV (T, 2, H, W) and residual (T, 3, H, W)
    of a clip (MM-ViT §4.1: random crop 224 and flip for training; resize to 340x256 beforehand).

    Train: a random crop (scale jitter) and flip shared by all three. Test: short-side scale + centre
    crop, or ``three_crop=True`` for left / centre / right views (stacked on a new dim 0).
    Output: normalised float tensors (ImageNet for I-frames, CoViAR for MV / residual).
    """

    size: int = 224
    train: bool = True
    flip: bool = True  # MM-ViT omits flipping on SSv2
    min_scale: float = 0.9
    max_scale: float = 1.33
    three_crop: bool = False
    mv_bound: float = 20.0

    def _finish(self, i: torch.Tensor, m: torch.Tensor, r: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"iframe": normalize(i, channel_dim=-3), "mv": normalize_mv(m, self.mv_bound),
                "residual": normalize_residual(r)}

    def __call__(self, iframe: torch.Tensor, mv: torch.Tensor, residual: torch.Tensor,
                 rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        if iframe.shape[-2:] != mv.shape[-2:] or iframe.shape[-2:] != residual.shape[-2:]:
            raise ValueError(f"modalities differ in size: {tuple(iframe.shape)}, {tuple(mv.shape)}, "
                             f"{tuple(residual.shape)}")
        rng = rng or np.random.default_rng()
        h, w = iframe.shape[-2:]
        if self.train:
            box = scale_jitter_crop_params(h, w, self.size, rng, self.min_scale, self.max_scale)
            out = [resize(crop(t, *box), (self.size, self.size), is_mv=k == 1)
                   for k, t in enumerate((iframe, mv, residual))]
            if self.flip and rng.random() < 0.5:
                out = [hflip(t, is_mv=k == 1) for k, t in enumerate(out)]
            return self._finish(*out)
        scaled = [short_side_scale(t, self.size, is_mv=k == 1) for k, t in enumerate((iframe, mv, residual))]
        if not self.three_crop:
            return self._finish(*[center_crop(t, self.size) for t in scaled])
        views = [self._finish(*v) for v in zip(*[three_crop(t, self.size) for t in scaled])]
        return {k: torch.stack([v[k] for v in views]) for k in views[0]}
