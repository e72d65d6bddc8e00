"""What a model's weights expect of a clip: sampling, resize, crop and normalisation travel with the weights.

A :class:`Preprocessing` is stored with every model (``model.preprocessing``), written into runs and exported
directories, and read back by ``train`` (fine-tuning), ``eval``, ``predict`` and the exporters, so one clip
gets the same tensor everywhere. The defaults are the ImageNet statistics and the dense sampler the library
trained with before weights carried their own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from .transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Preprocessing:
    """Input convention of one set of weights.

    ``mean`` / ``std`` apply to pixels scaled to [0, 1] (TokShift's [-1, 1] input is mean = std = 0.5);
    ``resize`` is the short side before the centre crop of ``img_size`` (None: ``img_size``); ``num_frames``
    frames ``stride`` apart (``sampler="dense"``) or spread over the video (``"uniform"``, TSN).
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    img_size: int = 224
    resize: int | None = None
    num_frames: int = 8
    stride: int = 4
    sampler: Literal["dense", "uniform"] = "dense"

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError(f"preprocessing: mean and std need 3 values, std > 0; got {self.mean}, {self.std}")
        if self.img_size < 1 or self.num_frames < 1 or self.stride < 1:
            raise ValueError(f"preprocessing: img_size, num_frames and stride must be >= 1, got "
                             f"{self.img_size}, {self.num_frames}, {self.stride}")
        if self.sampler not in ("dense", "uniform"):
            raise ValueError(f"preprocessing: sampler must be dense or uniform, got {self.sampler!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def short_side(self) -> int:
        return self.resize or self.img_size

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "preprocessing") -> "Preprocessing":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{source}: unknown preprocessing key(s) {unknown}; valid: {sorted(names)}")
        return cls(**{k: tuple(v) if k in ("mean", "std") else v for k, v in values.items()})
