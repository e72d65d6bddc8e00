"""Mixup / CutMix on video batches with label smoothing (ViViT Table 7: mixup alpha 0.1 / 0.3, label
smoothing 0.2 / 0.3 on EK / SSv2).

The CutMix box is the same for every frame (and every modality of a compressed batch): it cuts a
spatial tube, and the label weight is the box's actual area fraction after clipping to the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["one_hot_smooth", "Mixup"]


def one_hot_smooth(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) int -> (B, num_classes) float on ``target``'s device; ``1 - smoothing + smoothing / K`` on the true
    class."""
    if target.dim() != 1:
        raise ValueError(f"targets must be (B,) class indices, got {tuple(target.shape)}")
    if (target < 0).any() or (target >= num_classes).any():
        raise ValueError(f"targets out of range [0, {num_classes}): {target.tolist()}")
    off = smoothing / num_classes
    out = torch.full((len(target), num_classes), off, device=target.device)
    out.scatter_(1, target.view(-1, 1), 1.0 - smoothing + off)
    return out


@dataclass
class Mixup:
    """Batch-level mixup (alpha ``mixup_alpha``) or CutMix (alpha ``cutmix_alpha``), chosen per batch
    with ``switch_prob`` when both are on, applied with probability ``prob``; the batch is mixed
    with its reverse. Inputs: a tensor (B, ..., H, W) or a dict of such tensors (compressed
    modalities, mixed with the same lambda and box); integer targets (B,). For multi-head labels
    (Epic-Kitchens verb + noun) give ``num_classes`` as a tuple and targets (B, heads): the result is
    then a tuple of soft targets, one per head, mixed with the same lambda.
    Returns the mixed inputs and soft targets (B, num_classes), on the inputs' device (the draws come from the
    NumPy ``rng``, so a batch mixes the same on any device).
    """

    num_classes: int | tuple[int, ...]
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1

    def __call__(self, x, target: torch.Tensor, rng: np.random.Generator | None = None):
        rng = rng or np.random.default_rng()
        heads = isinstance(self.num_classes, (tuple, list))
        if heads:
            if target.dim() != 2 or target.shape[1] != len(self.num_classes):
                raise ValueError(f"targets must be (B, {len(self.num_classes)}) for heads {self.num_classes}, "
                                 f"got {tuple(target.shape)}")
            smooth = [one_hot_smooth(target[:, k], n, self.label_smoothing) for k, n in enumerate(self.num_classes)]
        else:
            smooth = [one_hot_smooth(target, self.num_classes, self.label_smoothing)]
        finish = (lambda ts: tuple(ts)) if heads else (lambda ts: ts[0])
        use_mix, use_cut = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if rng.random() >= self.prob or not (use_mix or use_cut):
            return x, finish(smooth)
        cut = use_cut and (not use_mix or rng.random() < self.switch_prob)
        lam = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha) if cut else rng.beta(self.mixup_alpha, self.mixup_alpha))
        tensors = x if isinstance(x, dict) else {"x": x}
        h, w = next(iter(tensors.values())).shape[-2:]
        if cut:
            ratio = np.sqrt(1.0 - lam)
            ch, cw = int(h * ratio), int(w * ratio)
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
            y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
            x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
        out = {}
        for k, t in tensors.items():
            if not t.is_floating_point():
                raise ValueError(f"mixup needs float inputs ('{k}' is {t.dtype}); normalise first")
            if t.shape[-2:] != (h, w):
                raise ValueError(f"'{k}' has size {tuple(t.shape[-2:])}, expected {(h, w)}")
            flipped = t.flip(0)
            if cut:
                m = t.clone()
                m[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
            else:
                m = lam * t + (1.0 - lam) * flipped
            out[k] = m
        mixed = [lam * t + (1.0 - lam) * t.flip(0) for t in smooth]
        return (out if isinstance(x, dict) else out["x"]), finish(mixed)
