"""Linear layers at inference on the CPU through oneDNN, and weights derived from parameters, cached.

PyTorch's CPU ``F.linear`` is ``addmm``: the bias is first copied into the output, then a BLAS GEMM adds the
product; with the MKL build on AMD CPUs that GEMM does not use AVX-512. oneDNN's linear
(``torch.ops.mkldnn._linear_pointwise``, the kernel of Inductor's CPU backend) adds the bias and a GELU inside
the GEMM. Measured on TimeSformer-B's shapes (2-core AVX-512 EPYC, 1 thread): fp32 2.0× faster, bf16 1.05-1.3×
(``benchmarks/README.md``). :func:`linear` takes that path for inference on the CPU -- no autograd, nothing
:func:`watched` (the MAC counter, ``FlopCounterMode`` and the exporters see ``F.linear`` as before) -- and is
``F.linear`` (plus the activation) everywhere else. Under CPU bf16 autocast the bf16 weights are cast once and
cached for the module (:func:`derived`), where autocast casts them again on every forward.
"""
from __future__ import annotations

import functools
import weakref
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_ONEDNN_ACTS = {None: ("none", ""), "gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh")}
_DERIVED: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple]] = weakref.WeakKeyDictionary()
_PLAIN_ACTS: dict[str | None, Callable[[torch.Tensor], torch.Tensor]] = {
    None: lambda x: x, "gelu": F.gelu, "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
}


def watched() -> bool:
    """Whether something records the ops (a dispatch mode: the MAC counter, ``FlopCounterMode``,
    ``torch.export``; the TorchScript tracer of the ONNX exporter; ``torch.compile``): inference-only paths then
    run the model as defined."""
    return bool(torch._C._len_torch_dispatch_stack()) or torch.jit.is_tracing() or torch.compiler.is_compiling()


@functools.cache
def onednn_available() -> bool:
    """Whether this build has the oneDNN linear kernel and it agrees with ``F.linear`` (probed once)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 8, generator=gen), torch.randn(4, 8, generator=gen), torch.randn(4, generator=gen)
    try:
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            out = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
            return bool(torch.allclose(out, F.linear(x, w, b), atol=1e-4))
    except RuntimeError:
        return False


def onednn_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype an inference-only CPU linear computes in (fp32, or bf16 from the inputs or CPU autocast);
    None where :func:`linear` must be ``F.linear`` (autograd, a dispatch mode, other devices / dtypes)."""
    if x.device.type != "cpu" or watched():
        return None
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return None
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        return dtype if dtype == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16) else None
    if x.dtype == weight.dtype and x.dtype in (torch.float32, torch.bfloat16):
        return x.dtype if onednn_available() else None
    return None


def derived(owner: nn.Module, tag: str, tensors: Sequence[torch.Tensor | None],
            make: Callable[[], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """``make()`` cached for ``owner`` under ``tag`` until one of ``tensors`` changes: in place (its version
    counter) or replaced / moved (its storage). Kept beside the module (a weak mapping), so neither its state
    dict nor a pickled / deep-copied module carries it."""
    key = tuple(None if t is None else (t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
    cache = _DERIVED.setdefault(owner, {})
    if tag not in cache or cache[tag][0] != key:
        with torch.no_grad():
            cache[tag] = key, make()
    return cache[tag][1]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str | None = None,
           owner: nn.Module | None = None, tag: str = "") -> torch.Tensor:
    """``act(x Wᵀ + b)`` (``act``: None, ``"gelu"`` or ``"gelu_tanh"``); oneDNN for CPU inference (bf16
    weights cached on ``owner`` under ``tag`` when autocast casts them), else ``F.linear``."""
    dtype = onednn_dtype(x, weight)
    if dtype is None or not x.numel() or not onednn_available():
        return _PLAIN_ACTS[act](F.linear(x, weight, bias))
    if weight.dtype != dtype:
        cast = lambda: tuple(t.to(dtype) if t is not None else None for t in (weight, bias))  # noqa: E731
        weight, bias = derived(owner, f"{tag}:{dtype}", (weight, bias), cast) if owner is not None else cast()
    elif bias is not None and bias.dtype != dtype:
        bias = bias.to(dtype)
    attr, algorithm = _ONEDNN_ACTS[act]
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]).to(dtype), weight, bias, attr, [],
                                             algorithm)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def apply_linear(layer: nn.Linear, x: torch.Tensor, act: str | None = None) -> torch.Tensor:
    """:func:`linear` with ``layer``'s weight and bias, cached on ``layer``."""
    return linear(x, layer.weight, layer.bias, act, layer, "weight")
