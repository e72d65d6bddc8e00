"""The engine boundary: what a model consumes (:class:`InputSpec`) and what the loaders give it (:class:`Batch`).

Inputs are always a mapping ``{modality: tensor}`` with the batch first: ``"rgb"`` clips ``(B, 3, T, H, W)``, or
the compressed-domain modalities ``iframe`` / ``residual`` ``(B, T, 3, H, W)``, ``mv`` ``(B, T, 2, H, W)`` and
``audio`` ``(B, T, F)`` (MM-ViT §3.2). Test batches carry ``V`` views per sample after the batch axis
(``K`` temporal clips x ``S`` spatial crops, clip-major); the audio of a clip is shared by its crops.
:meth:`InputSpec.select` turns such a mapping into the call the model takes, the one place that knows an RGB
model takes a tensor and MM-ViT a mapping.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from .preprocessing import Preprocessing

__all__ = ["RGB", "COMPRESSED", "InputSpec", "Batch", "with_views"]

RGB = "rgb"
COMPRESSED = ("iframe", "mv", "residual", "audio")
TIME_AXIS = {RGB: 1}  # of one sample: RGB clips are (3, T, H, W); every compressed modality is (T, ...)

Inputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class InputSpec:
    """What a model consumes: ``num_frames`` frames of ``img_size``² per clip, the ``modalities`` it reads
    (``("rgb",)``: one clip tensor; else compressed-domain names, taken as a mapping) and the input convention
    of its weights (``preprocessing``: sampler, stride, resize, mean / std; None until resolved)."""

    num_frames: int
    img_size: int
    modalities: tuple[str, ...] = (RGB,)
    preprocessing: Preprocessing | None = None

    @property
    def compressed(self) -> bool:
        return self.modalities != (RGB,)

    def select(self, inputs: Inputs) -> torch.Tensor | Inputs:
        """The model's argument: the RGB clip tensor, or the mapping of its compressed modalities."""
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise ValueError(f"the model takes {self.describe()}, the batch holds {sorted(inputs)}")
        return inputs[RGB] if not self.compressed else {m: inputs[m] for m in self.modalities}

    def describe(self) -> str:
        return f"compressed-domain modalities {', '.join(self.modalities)}" if self.compressed else "RGB clips"


def with_views(inputs: Inputs, num_views: int) -> Inputs:
    """One test sample's inputs with a leading view axis V: clips ``(V, 3, T, H, W)``, visual modalities
    ``(V, T, C, H, W)``; audio ``(T, F)`` has no crop axis and is shared by the views ``(V, T, F)``."""
    return {k: v.expand(num_views, *v.shape) if v.dim() == 2 else v.reshape(num_views, *v.shape[-4:])
            for k, v in inputs.items()}


@dataclass
class Batch:
    """``inputs`` ``{modality: (B, [V,] ...)}``, ``labels`` ``(B,)`` or ``(B, heads)``; ``index``: the dataset
    indices (video ids) of the samples, when known; ``views``: V, the size of the view axis of test batches
    (None: no view axis)."""

    inputs: Inputs
    labels: torch.Tensor
    index: list[int] = field(default_factory=list)
    views: int | None = None

    @classmethod
    def collate(cls, items: Sequence[tuple[Inputs, torch.Tensor]], index: Sequence[int] = (),
                views: int | None = None) -> "Batch":
        """Stack ``(inputs, label)`` samples (test samples with ``views`` views each, see :func:`with_views`)."""
        names = items[0][0].keys()
        return cls({k: torch.stack([x[k] for x, _ in items]) for k in names},
                   torch.stack([torch.as_tensor(y) for _, y in items]), list(index), views)

    def __len__(self) -> int:
        return len(self.labels)

    def map(self, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> "Batch":
        return replace(self, inputs={k: fn(k, v) for k, v in self.inputs.items()})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """The batch on ``device`` (``non_blocking``: overlap the copy from pinned memory with compute)."""
        moved = self.map(lambda _, v: v.to(device, non_blocking=non_blocking))
        return replace(moved, labels=self.labels.to(device, non_blocking=non_blocking))

    def flat_views(self) -> "Batch":
        """Views folded into the batch axis, ``(B * V, ...)``, as the model takes them (labels unchanged)."""
        return self if self.views is None else replace(self.map(lambda _, v: v.flatten(0, 1)), views=None)

    def shuffled(self, generator: torch.Generator) -> "Batch":
        """Every clip with its own random frame order, shared by its modalities (MViT Table 9 frame-shuffle
        test); views must be folded first (:meth:`flat_views`)."""
        first = next(iter(self.inputs))
        n, t = self.inputs[first].shape[0], self.inputs[first].shape[1 + TIME_AXIS.get(first, 0)]
        perms = torch.rand(n, t, generator=generator, device=generator.device).argsort(dim=1)  # (N, T)
        return self.map(lambda k, v: shuffle_time(v, perms.to(v.device), 1 + TIME_AXIS.get(k, 0)))


def shuffle_time(x: torch.Tensor, perms: torch.Tensor, axis: int) -> torch.Tensor:
    """``x`` with the ``axis`` (time) of sample i reordered by ``perms[i]`` ``(N, T)``."""
    shape = [1] * x.dim()
    shape[0], shape[axis] = perms.shape
    return x.gather(axis, perms.view(shape).expand_as(x))
