"""Multiply-accumulates (MACs) of a model for one clip, counted at the dispatch level on the meta device.

Convention of the ViViT (Table 2) and MViT tables, which call the result "FLOPs": every matrix product,
linear layer and convolution counts its multiply-accumulates, *including* the attention products Q·Kᵀ and
A·V of ViViT Eq. 7 (``L_q·L_k·d`` each per head). Element-wise work (softmax, norms, activations, biases,
positional embeddings) is not counted.

The counter is a ``TorchDispatchMode`` that sees every ATen matmul / convolution / fused-attention kernel,
so it needs no per-layer rules: build the model under ``torch.device("meta")`` and nothing is computed.
``torch.utils.flop_counter.FlopCounterMode`` has no formula for the CPU SDPA kernel
(``_scaled_dot_product_flash_attention_for_cpu``) and so misses the attention products of a real CPU
forward; the formulas here cover every SDPA kernel, the fused and the manual attention path count the same.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..models import create_model, model_config

aten = torch.ops.aten
Shape = Sequence[int]
Formula = Callable[..., int]


def _mm(a: torch.Tensor, b: torch.Tensor, *_: Any, **__: Any) -> int:
    """``(m, k) @ (k, n)``: ``m·k·n``."""
    return a.shape[0] * a.shape[1] * b.shape[1]


def _bmm(a: torch.Tensor, b: torch.Tensor, *_: Any, **__: Any) -> int:
    """``(B, m, k) @ (B, k, n)``: ``B·m·k·n``."""
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def _conv(x: torch.Tensor, w: torch.Tensor, _bias: Any, _stride: Any, _padding: Any, _dilation: Any,
          transposed: bool, *_: Any, out: torch.Tensor, **__: Any) -> int:
    """One ``prod(weight)``-sized product per batch item and output position (input position if transposed);
    ``weight`` is ``(C_out, C_in/groups, *k)``, so grouped and depthwise convolutions are exact."""
    positions = math.prod((x if transposed else out).shape[2:])
    return x.shape[0] * positions * w.numel()


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any, **__: Any) -> int:
    """Q·Kᵀ (``L_q·L_k·d``) plus A·V (``L_q·L_k·d_v``) for every batch item and query head."""
    return math.prod(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])


FORMULAS: dict[Any, Formula] = {
    aten.mm: _mm,
    aten.addmm: lambda _bias, a, b, *args, **kw: _mm(a, b),
    aten._addmm_activation: lambda _bias, a, b, *args, **kw: _mm(a, b),
    aten.bmm: _bmm,
    aten.baddbmm: lambda _bias, a, b, *args, **kw: _bmm(a, b),
    aten.convolution: _conv,
    aten._convolution: _conv,
    aten.convolution_overrideable: _conv,
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa,
    aten._scaled_dot_product_flash_attention: _sdpa,
    aten._scaled_dot_product_efficient_attention: _sdpa,
    aten._scaled_dot_product_cudnn_attention: _sdpa,
    aten._scaled_dot_product_fused_attention_overrideable: _sdpa,
}
"""MAC formula of each ATen op (an ``OpOverloadPacket``); ops not listed count zero."""


class MacCounter(TorchDispatchMode):
    """Accumulates the MACs of every dispatched op into ``counts[(scope, op name)]``.

    ``scope`` is the innermost module entered through :meth:`track` ("" outside all of them).
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        self._scopes: list[str] = [""]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = FORMULAS.get(func.overloadpacket)
        if formula is not None:
            self.counts[(self._scopes[-1], func.overloadpacket.__name__)] += formula(*args, out=out, **kwargs)
        return out

    def track(self, modules: Mapping[str, nn.Module]) -> list[Any]:
        """Attribute the ops run inside each named module to its name; returns the hook handles."""
        def enter(name: str) -> Callable[..., None]:
            return lambda *_: self._scopes.append(name)

        def leave(*_: Any) -> None:
            self._scopes.pop()

        handles = []
        for name, module in modules.items():
            handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave)]
        return handles


@dataclass(frozen=True)
class UnitCount:
    """Parameters and MACs of one part of a model (an embedding, a block, the head)."""

    name: str
    params: int
    macs: int


TOP_LEVEL = "(top level)"


@dataclass(frozen=True)
class MacReport:
    """Parameters and multiply-accumulates of one forward pass on a single clip.

    ``units``: the per-module breakdown in registration order (units with neither parameters nor MACs left
    out); ``TOP_LEVEL`` holds parameters owned by the model itself (CLS tokens) and ops run directly in its
    ``forward``. ``ops``: MACs per ATen op.
    """

    input_shape: tuple[int, ...] | dict[str, tuple[int, ...]]
    params: int
    macs: int
    units: tuple[UnitCount, ...]
    ops: dict[str, int]
    model: str = ""

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def summary(self) -> dict[str, Any]:
        """``model``, ``params``, ``gmacs`` and ``input`` (``[C, T, H, W]``) as plain JSON values."""
        shape = self.input_shape
        shape = {k: list(v) for k, v in shape.items()} if isinstance(shape, dict) else list(shape)
        return {"model": self.model, "params": self.params, "gmacs": round(self.gmacs, 4), "input": shape}

    def table(self) -> str:
        """The per-module breakdown as aligned text: name, params (M), GMACs, share of the total."""
        width = max([len(u.name) for u in self.units] + [6])
        lines = [f"{'module':<{width}}  {'params (M)':>10}  {'GMACs':>9}  {'%':>5}"]
        for u in self.units:
            share = 100 * u.macs / self.macs if self.macs else 0.0
            lines.append(f"{u.name:<{width}}  {u.params / 1e6:>10.3f}  {u.macs / 1e9:>9.3f}  {share:>5.1f}")
        lines.append(f"{'total':<{width}}  {self.params / 1e6:>10.3f}  {self.gmacs:>9.3f}  {100.0:>5.1f}")
        return "\n".join(lines)


def default_units(model: nn.Module) -> dict[str, nn.Module]:
    """The breakdown of a model: each top-level child, with ``ModuleList`` / ``Sequential`` children split
    into their items (``blocks.0``, ``blocks.1`` ...)."""
    units: dict[str, nn.Module] = {}
    for name, child in model.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            units.update({f"{name}.{i}": item for i, item in child.named_children()})
        else:
            units[name] = child
    return units


def _n_params(params: Any) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def count_macs(
    model: nn.Module,
    input_shape: Shape | Mapping[str, Shape],
    units: Mapping[str, nn.Module] | None = None,
    name: str = "",
) -> MacReport:
    """MACs of ``model`` on one clip of ``input_shape`` (``(C, T, H, W)``, without batch), run in eval mode
    on the device of the model's parameters -- build it on ``meta`` and nothing is computed.

    A mapping ``{argument: shape}`` passes several inputs by keyword (multi-modal models). ``units`` names the
    modules of the breakdown (default: :func:`default_units`).
    """
    ref = next(model.parameters(), None)
    device, dtype = (ref.device, ref.dtype) if ref is not None else (torch.device("meta"), torch.float32)
    if isinstance(input_shape, Mapping):
        shapes: Any = {k: tuple(v) for k, v in input_shape.items()}
        args, kwargs = (), {k: torch.empty(1, *v, device=device, dtype=dtype) for k, v in shapes.items()}
    else:
        shapes = tuple(input_shape)
        args, kwargs = (torch.empty(1, *shapes, device=device, dtype=dtype),), {}
    units = default_units(model) if units is None else dict(units)
    counter, training = MacCounter(), model.training
    handles = counter.track(units)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(*args, **kwargs)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()

    macs_by_unit: dict[str, int] = defaultdict(int)
    ops: dict[str, int] = defaultdict(int)
    for (scope, op), macs in counter.counts.items():
        macs_by_unit[scope] += macs
        ops[op] += macs
    inside = {id(p) for m in units.values() for p in m.parameters()}
    rows = [UnitCount(n, _n_params(m.parameters()), macs_by_unit.get(n, 0)) for n, m in units.items()]
    rows.append(UnitCount(TOP_LEVEL, _n_params(p for p in model.parameters() if id(p) not in inside),
                          macs_by_unit.get("", 0)))
    rows = [r for r in rows if r.params or r.macs]  # drop dropout / identity modules
    return MacReport(shapes, _n_params(model.parameters()), sum(ops.values()), tuple(rows), dict(ops), name)


def count_model(name: str, num_frames: int | None = None, img_size: int | None = None,
                num_classes: int | None = None, **overrides: Any) -> MacReport:
    """Build the registered model ``name`` on the meta device and count one ``(C, T, S, S)`` clip (or one
    clip of every input a multi-modal model lists in ``input_shapes()``)."""
    cfg = model_config(name, num_classes=num_classes, num_frames=num_frames, img_size=img_size, **overrides)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, num_frames=num_frames, img_size=img_size, **overrides)
    shapes = getattr(model, "input_shapes", None)  # multi-modal models name their inputs
    shape = shapes() if shapes is not None else (cfg.in_chans, cfg.num_frames, cfg.img_size, cfg.img_size)
    return count_macs(model, shape, name=name)
