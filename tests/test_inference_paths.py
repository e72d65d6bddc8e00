"""Inference-only execution paths: the TimeSformer ``temporal_fc`` fold, the CPU bf16 / fp16 attention path and
the oneDNN linear layers give the model as defined (to rounding), and nothing that counts or saves the model
sees them."""
from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F

from videoformer.analysis import count_macs
from videoformer.layers import AxisAttention, attend
from videoformer.layers import attention as attention_module
from videoformer.layers.linear import _DERIVED, apply_linear
from videoformer.models import create_model

NAME = "timesformer_tiny_divided"


def clip(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))


def extra_projections(model: torch.nn.Module) -> list[AxisAttention]:
    return [m for m in model.modules() if isinstance(m, AxisAttention) and m.fc is not None]


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Non-zero weights everywhere (``temporal_fc`` starts at zero, which would hide a wrong fold)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def test_folded_temporal_fc_equals_unfolded() -> None:
    model = create_model(NAME).eval()
    randomize(model, 0)
    x = clip()
    with torch.enable_grad():  # autograd on: the two projections run as defined
        unfolded = model(x).detach()
    with torch.no_grad():
        folded = model(x)
    assert all("fold" in _DERIVED[m] for m in extra_projections(model))  # the fold did run
    torch.testing.assert_close(folded, unfolded, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["mmvit_tiny_coattn", "mmvit_tiny_shiftmerge", "mmvit_tiny_local", "msca_tiny",
                                  "tokenshift_tiny", "vivit_tiny_fdp", "timesformer_tiny_local_global"])
def test_inference_paths_equal_the_definition_for_every_spec(name: str) -> None:
    """Specs with an extra ``fc`` (MM-ViT's added sublayers, shift-merge), masks (co-attention), q/k/v hooks
    (MSCA), window post-ops and head groups: inference without autograd (fold, oneDNN, chunked half attention)
    gives what autograd-on execution of the same model and precision gives."""
    model = create_model(name).eval()
    randomize(model, 0)
    gen = torch.Generator().manual_seed(1)
    if hasattr(model, "input_shapes"):  # MM-ViT: one input per modality
        inputs = {m: torch.randn(1, *shape, generator=gen) for m, shape in model.input_shapes().items()}
        run = lambda: model(**inputs)  # noqa: E731
    else:
        video = torch.randn(1, 3, model.cfg.num_frames, model.cfg.img_size, model.cfg.img_size, generator=gen)
        run = lambda: model(video)  # noqa: E731
    outputs = {}
    for autograd in (True, False):
        with torch.set_grad_enabled(autograd):
            outputs["fp32", autograd] = run().detach()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outputs["bf16", autograd] = run().detach().float()
    assert all(("fold" in _DERIVED.get(m, {})) == (m.fc is not None) for m in model.modules() if hasattr(m, "fc"))
    torch.testing.assert_close(outputs["fp32", False], outputs["fp32", True], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs["bf16", False], outputs["bf16", True], atol=1e-2, rtol=1e-2)


def test_fold_follows_weight_changes() -> None:
    model = create_model(NAME).eval()
    randomize(model, 0)
    x = clip()
    with torch.no_grad():
        before = model(x)
        randomize(model, 1)  # in place, as load_state_dict and optimisers do
        after = model(x)
        fresh = create_model(NAME).eval()
        fresh.load_state_dict(model.state_dict())
        with torch.enable_grad():
            expected = fresh(x).detach()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)
    attn = extra_projections(model)[0]
    attn.fc.weight = torch.nn.Parameter(torch.zeros_like(attn.fc.weight))  # replaced, not modified in place
    weight, bias = attn.folded_proj()
    assert not weight.any() and torch.equal(bias, attn.fc.bias.detach())


def test_fold_changes_neither_state_dict_nor_mac_count() -> None:
    model = create_model(NAME).eval()
    keys = list(model.state_dict())
    with torch.no_grad():
        model(clip())
    assert list(model.state_dict()) == keys
    with torch.device("meta"):
        meta = create_model(NAME)
    assert count_macs(model, (3, 4, 32, 32)).macs == count_macs(meta, (3, 4, 32, 32)).macs


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit.trace")
def test_traced_model_is_the_model_as_defined() -> None:
    """The TorchScript tracer (ONNX export) sees neither the oneDNN op nor the fold, even after eager inference
    built their caches."""
    model = create_model(NAME).eval()
    randomize(model, 0)
    x = clip(1)
    with torch.no_grad():
        eager = model(x)
        traced = torch.jit.trace(model, (x,))
        graph = str(traced.inlined_graph)
        torch.testing.assert_close(traced(x), eager, atol=1e-5, rtol=1e-5)
    assert "mkldnn" not in graph and graph.count("aten::linear") >= 2 * len(extra_projections(model))


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="Inductor needs a C++ compiler")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # Inductor's imports
def test_compiled_model_is_the_model_as_defined() -> None:
    """``torch.compile`` (Inductor) at inference traces the model as defined: the oneDNN op and the fold stand
    aside, as for the other tracers (Inductor failed on the oneDNN op before)."""
    model = create_model(NAME).eval()
    randomize(model, 0)
    x = clip(1)
    with torch.no_grad():
        eager = model(x)
        torch.testing.assert_close(torch.compile(model)(x), eager,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 3, 5, 16), (1, 2, 40, 8)])
def test_cpu_half_attention_matches_fp32(dtype: torch.dtype, shape: tuple[int, ...], monkeypatch) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    reference = F.scaled_dot_product_attention(q, k, v)
    with torch.no_grad():
        half = attend(*(t.to(dtype) for t in (q, k, v)))
        with torch.autocast("cpu", dtype=dtype):  # fp32 inputs, the autocast dtype decides
            autocast = attend(q, k, v)
        monkeypatch.setattr(attention_module, "_SCORE_BYTES", 1)  # one sequence per chunk
        chunked = attend(*(t.to(dtype) for t in (q, k, v)))
        manual = attend(*(t.to(dtype) for t in (q, k, v)), fused=False)
    assert half.dtype == autocast.dtype == dtype and half.shape == reference.shape
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    for out in (half, autocast, chunked, manual):
        torch.testing.assert_close(out.float(), reference, atol=tol, rtol=tol)
    torch.testing.assert_close(chunked, half, atol=0, rtol=0)


@pytest.mark.parametrize("rows", [1 << 20, 1])  # whole sequences per chunk, one query row per chunk
def test_cpu_half_attention_honours_the_mask(rows: int, monkeypatch) -> None:
    """The co-attention mask (no key at the query's own position) holds on the chunked path too."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 16, generator=gen) for _ in range(3))
    mask = ~torch.eye(5, dtype=torch.bool)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    monkeypatch.setattr(attention_module, "_SCORE_BYTES", rows)
    with torch.no_grad():
        half = attend(*(t.bfloat16() for t in (q, k, v)), mask=mask)
    assert not torch.allclose(reference, F.scaled_dot_product_attention(q, k, v), atol=0.1)  # the mask matters
    torch.testing.assert_close(half.float(), reference, atol=2e-2, rtol=2e-2)


def test_training_keeps_sdpa_gradients() -> None:
    """With autograd the CPU half path is not taken: bf16 gradients flow through SDPA as before."""
    q, k, v = (torch.randn(1, 2, 6, 8, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    attend(q, k, v).float().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("act", [None, "gelu", "gelu_tanh"])
def test_onednn_linear_matches_f_linear(act: str | None) -> None:
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(24, 40)
    x = torch.randn(2, 7, 24, generator=gen)
    plain = {None: lambda t: t, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}[act]
    reference = plain(F.linear(x, layer.weight, layer.bias)).detach()
    with torch.no_grad():
        fp32 = apply_linear(layer, x, act)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = apply_linear(layer, x, act)
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16 and bf16.shape == reference.shape
    torch.testing.assert_close(fp32, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bf16.float(), reference, atol=5e-2, rtol=5e-2)
    out = apply_linear(layer, x.requires_grad_(), act)  # autograd: F.linear, gradients flow
    out.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None


def test_cast_weights_follow_changes_and_stay_off_the_module() -> None:
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(3, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        apply_linear(layer, x)
        layer.weight.mul_(2)  # in place: the cached bf16 copy must be re-derived
        after = apply_linear(layer, x).float()
    torch.testing.assert_close(after, F.linear(x, layer.weight, layer.bias).detach(), atol=5e-2, rtol=5e-2)
    assert _DERIVED[layer] and "_derived" not in vars(layer)
    assert copy.deepcopy(layer) not in _DERIVED
