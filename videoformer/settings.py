"""Settings shared by the data module and the run config, declared once: value rules on dataclass fields
(``Annotated[type, rule]`` metadata, checked by :func:`videoformer.engine.config.validate`), the error they
raise, and :class:`Augment`, the training augmentation that ``VideoTransform`` applies and ``DataConfig``
exposes as ``data.*`` keys. Imports nothing heavy, so reading a config stays cheap."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Literal


class ConfigError(ValueError):
    """An unknown key, a value of the wrong type or outside its choices, or an unreadable config file."""


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric field (``list[Annotated[float, Range(...)]]``: of each element): ``lo`` /
    ``hi`` bounds (None: open ended), inclusive unless ``lo_open`` / ``hi_open``; ``hint`` is appended to the
    error (e.g. how to turn a feature off). An unset (None) optional field is not checked."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    hint: str = ""

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"{'<' if self.hi_open else '<='} {self.hi:g}"

    def check(self, value: float, where: str) -> None:
        low_ok = self.lo is None or value > self.lo or (not self.lo_open and value == self.lo)
        high_ok = self.hi is None or value < self.hi or (not self.hi_open and value == self.hi)
        if not (low_ok and high_ok):
            hint = f"; {self.hint}" if self.hint else ""
            raise ConfigError(f"{where} must be {self.describe()}, got {value}{hint}")


@dataclass(frozen=True)
class Length:
    """A list field of exactly ``n`` values."""

    n: int

    def check(self, value: list, where: str) -> None:
        if len(value) != self.n:
            raise ConfigError(f"{where} needs {self.n} values, got {value}")


POSITIVE = Range(0, lo_open=True)
AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
FRACTION = Range(0, 1)  # a probability or a share


@dataclass(kw_only=True)
class Augment:
    """Training augmentation of RGB clips (ViViT Table 7): scale jitter of the short side (``min_scale`` -
    ``max_scale``, ViViT) or Inception random resized crop, horizontal flip, colour jitter, RandAugment
    (``randaug_layers`` ops at ``randaug_magnitude`` on the 0-30 scale). Keyword-only, so a class that adds
    its own fields (``VideoTransform``, ``DataConfig``) keeps their positions."""

    crop: Literal["scale_jitter", "random_resized"] = "scale_jitter"  # training crop
    min_scale: Annotated[float, POSITIVE] = 0.9  # scale jitter of the short side (<= max_scale)
    max_scale: Annotated[float, POSITIVE] = 1.33
    # horizontal flips in training; set 0 when a class depends on left vs right (e.g. "move left" / "move right")
    flip_prob: Annotated[float, FRACTION] = 0.5
    color_jitter_prob: Annotated[float, FRACTION] = 0.0  # share of training clips colour-jittered
    randaug_layers: Annotated[int, AT_LEAST_0] = 0  # RandAugment operations per clip (0: off)
    randaug_magnitude: Annotated[int, Range(0, 30)] = 15  # on RandAugment's 0-30 scale

    def augment(self) -> dict[str, Any]:
        """The augmentation fields of this object, as keywords of any other :class:`Augment`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Augment)}
