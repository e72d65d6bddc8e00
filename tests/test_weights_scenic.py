"""Scenic ViViT checkpoints (flax msgpack) -> videoformer: the msgpack reader, and models 1-4 against a
reference written from Scenic's ``projects/vivit/model.py`` (flax parameter trees, NHWC convs, per-head
attention over the axes Scenic uses), so every Scenic convention is pinned both ways: with it the logits match,
without it they do not."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videoformer.layers import Grid
from videoformer.models import create_model
from videoformer.weights.common import (FORMATS, CheckpointError, CheckpointMismatchError,
                                        load_checked, read_file, read_state_dict)
from videoformer.weights.pretrained import from_converted
from videoformer.weights.scenic import convert_scenic_vivit, detect_scenic_vivit, load_scenic_vivit

B, C, T, S, P, TUBELET = 2, 3, 4, 16, 8, 2
D, HEADS, MLP, DEPTH, CLASSES = 16, 4, 24, 2, 5


# ---------------------------------------------------------------- flax's msgpack serialisation, as flax writes it

def _ext(obj: Any) -> msgpack.ExtType:
    """flax.serialization's ``_msgpack_ext_pack``: ndarrays as ext 1 ``(shape, dtype name, C bytes)``, NumPy
    scalars as ext 3, complex numbers as ext 2."""
    if isinstance(obj, torch.Tensor):  # bfloat16, which NumPy lacks: flax writes its name and raw bytes
        payload = (list(obj.shape), "bfloat16", obj.contiguous().view(torch.uint16).numpy().tobytes())
        return msgpack.ExtType(1, msgpack.packb(payload, use_bin_type=True))
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(1, msgpack.packb((list(obj.shape), obj.dtype.name, obj.tobytes("C")), use_bin_type=True))
    if isinstance(obj, np.generic):
        arr = np.asarray(obj)
        return msgpack.ExtType(3, msgpack.packb(([], arr.dtype.name, arr.tobytes()), use_bin_type=True))
    if isinstance(obj, complex):
        return msgpack.ExtType(2, msgpack.packb((obj.real, obj.imag)))
    raise TypeError(type(obj))


def write_flax(path: Path, tree: dict) -> Path:
    path.write_bytes(msgpack.packb(tree, default=_ext, strict_types=True))
    return path


def test_msgpack_reader_decodes_flax_serialisation(tmp_path):
    rng = np.random.default_rng(0)
    big = rng.standard_normal((3, 5)).astype(np.float32)
    bf16 = torch.randn(4, 2).to(torch.bfloat16)
    tree = {"params": {"dense": {"kernel": rng.standard_normal((2, 3)).astype(np.float32),
                                 "bias": np.arange(3, dtype=np.int64)}},
            "step": np.int32(7), "lr": np.float64(0.5), "z": 1 + 2j, "name": "vivit", "flag": True,
            "half": bf16, "empty": {},
            # flax splits arrays over 1 GiB into flat chunks; the layout, at a size a test can afford
            "big": {"__msgpack_chunked_array__": True, "shape": {"0": 3, "1": 5},
                    "chunks": {"0": big.reshape(-1)[:8], "1": big.reshape(-1)[8:]}}}
    obj = read_file(write_flax(tmp_path / "checkpoint_100", tree))
    torch.testing.assert_close(obj["params"]["dense"]["kernel"], torch.from_numpy(tree["params"]["dense"]["kernel"]))
    assert obj["params"]["dense"]["bias"].dtype == torch.int64 and obj["params"]["dense"]["bias"].tolist() == [0, 1, 2]
    assert obj["step"] == 7 and obj["lr"] == 0.5 and obj["z"] == 1 + 2j and obj["name"] == "vivit"
    assert obj["flag"] is True and obj["empty"] == {}
    assert obj["half"].dtype == torch.bfloat16 and torch.equal(obj["half"], bf16)
    torch.testing.assert_close(obj["big"], torch.from_numpy(big))


def test_msgpack_reader_refuses_bad_files(tmp_path):
    good = msgpack.packb({"a": msgpack.ExtType(1, msgpack.packb(([2], "float32", b"\0" * 8), use_bin_type=True))})
    (tmp_path / "cut").write_bytes(good[:-3])
    with pytest.raises(CheckpointError, match="cannot read flax checkpoint .*cut"):
        read_file(tmp_path / "cut")
    (tmp_path / "short").write_bytes(msgpack.packb(
        {"a": msgpack.ExtType(1, msgpack.packb(([3], "float32", b"\0" * 8), use_bin_type=True))}))
    with pytest.raises(CheckpointError, match=r"shape \(3,\) and dtype float32 holds 8 bytes"):
        read_file(tmp_path / "short")
    (tmp_path / "ext").write_bytes(msgpack.packb({"a": msgpack.ExtType(9, b"x")}))
    with pytest.raises(CheckpointError, match="unknown msgpack extension type 9"):
        read_file(tmp_path / "ext")


# ---------------------------------------------------------------- Scenic ViViT parameter trees (random weights)

def _dense(rng, d_in: int, d_out: int) -> dict:
    return {"kernel": rng.standard_normal((d_in, d_out)).astype(np.float32) * 0.3,
            "bias": rng.standard_normal(d_out).astype(np.float32) * 0.1}


def _ln(rng) -> dict:
    return {"scale": 1 + 0.1 * rng.standard_normal(D).astype(np.float32),
            "bias": 0.1 * rng.standard_normal(D).astype(np.float32)}


def _mha(rng) -> dict:
    """flax MultiHeadDotProductAttention: query / key / value kernels (D, heads, hd), out kernel (heads, hd, D)."""
    hd = D // HEADS
    qkv = {n: {"kernel": rng.standard_normal((D, HEADS, hd)).astype(np.float32) * 0.3,
               "bias": rng.standard_normal((HEADS, hd)).astype(np.float32) * 0.1} for n in ("query", "key", "value")}
    return qkv | {"out": {"kernel": rng.standard_normal((HEADS, hd, D)).astype(np.float32) * 0.3,
                          "bias": rng.standard_normal(D).astype(np.float32) * 0.1}}


def _block(rng, factorised: bool) -> dict:
    mlp = {"Dense_0": _dense(rng, D, MLP), "Dense_1": _dense(rng, MLP, D)}
    if factorised:  # EncoderFactorizedSelfAttentionBlock
        return {"LayerNorm_time": _ln(rng), "MultiHeadDotProductAttention_time": _mha(rng),
                "LayerNorm_space": _ln(rng), "MultiHeadDotProductAttention_space": _mha(rng),
                "LayerNorm_mlp": _ln(rng), "MlpBlock": mlp}
    return {"LayerNorm_0": _ln(rng), "MultiHeadDotProductAttention_0": _mha(rng), "LayerNorm_1": _ln(rng),
            "MlpBlock_0": mlp}


def _encoder(rng, n_pos: int, depth: int = DEPTH, factorised: bool = False) -> dict:
    enc = {f"encoderblock_{i}": _block(rng, factorised) for i in range(depth)}
    pos = rng.standard_normal((1, n_pos, D)).astype(np.float32) * 0.1
    return enc | {"posembed_input": {"pos_embedding": pos}, "encoder_norm": _ln(rng)}


def scenic_params(model: int, classifier: str = "token", tubelet: int = TUBELET, temporal_depth: int = 2) -> dict:
    """A random parameter tree with the names and shapes Scenic's ViViT / SpaceTimeViViT create."""
    rng = np.random.default_rng(model)
    nt, n = T // tubelet, S // P
    kernel = (tubelet, P, P, C, D) if tubelet > 1 else (P, P, C, D)  # patches.size (h, w, t) -> Conv (t, h, w)
    tree = {"embedding": {"kernel": rng.standard_normal(kernel).astype(np.float32) * 0.1,
                          "bias": rng.standard_normal(D).astype(np.float32) * 0.1},
            "output_projection": _dense(rng, D, CLASSES)}
    token = classifier == "token"
    if model == 2:
        tree["SpatialTransformer"] = _encoder(rng, token + n * n)
        if token:
            tree["cls_SpatialTransformer"] = rng.standard_normal((1, 1, D)).astype(np.float32)
        if temporal_depth:
            tree["TemporalTransformer"] = _encoder(rng, token + nt, temporal_depth)
            if token:
                tree["cls_TemporalTransformer"] = rng.standard_normal((1, 1, D)).astype(np.float32)
    else:
        tree["Transformer"] = _encoder(rng, token + nt * n * n, factorised=model == 3)
        if token:
            tree["cls"] = rng.standard_normal((1, 1, D)).astype(np.float32)
    return tree


def train_state(params: dict, era: str) -> dict:
    """How Scenic's ``save_checkpoint`` wraps the parameters: flax.optim (released files) or optax."""
    momentum = {k: v for k, v in params.items() if k == "embedding"}
    if era == "target.params":  # flax.optim states whose target nests the parameters once more
        return {"optimizer": {"target": {"params": params}, "state": {"step": np.int64(1)}}, "model_state": {}}
    if era == "released":
        return {"global_step": np.int64(30000), "accum_train_time": np.float64(1.5), "model_state": {},
                "rng": np.array([0, 42], dtype=np.uint32),
                "optimizer": {"target": params, "state": {"step": np.int64(30000), "param_states": momentum}}}
    return {"params": params, "opt_state": {"0": {"count": np.int32(3)}, "1": {"trace": momentum}},
            "global_step": np.int64(3), "model_state": {}, "rng": np.array([0, 1], dtype=np.uint32),
            "metadata": {"chrono": {"accum_train_time": 2.0}}}


# ---------------------------------------------------------------- Scenic's forward pass, written from model.py

def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float32))


def ref_ln(x, p):
    return F.layer_norm(x, x.shape[-1:], _t(p["scale"]), _t(p["bias"]), eps=1e-6)  # flax LayerNorm


def ref_dense(x, p):
    return x @ _t(p["kernel"]) + _t(p["bias"])


def ref_mlp(x, p):
    # attention_layers.MlpBlock with activation_fn=nn.gelu: flax's gelu is the tanh approximation by default
    return ref_dense(F.gelu(ref_dense(x, p["Dense_0"]), approximate="tanh"), p["Dense_1"])


def ref_attend(q, k, v, axis: int):
    """softmax(q·k / √d) v over sequence ``axis`` of ``(..., heads, d)`` tensors, the other axes batch."""
    q, k, v = (t.movedim(axis, -3) for t in (q, k, v))  # (..., L, heads, d)
    w = torch.einsum("...qhd,...khd->...hqk", q / math.sqrt(q.shape[-1]), k).softmax(dim=-1)
    return torch.einsum("...hqk,...khd->...qhd", w, v).movedim(-3, axis)


def ref_mha(x, p, axes: list[int]):
    """nn.MultiHeadDotProductAttention on ``x`` (..., D); with several axes, ``factorized_dot_product_attention``:
    the heads split evenly, the i-th part attending over ``axes[i]``."""
    q, k, v = (torch.einsum("...d,dhk->...hk", x, _t(p[n]["kernel"])) + _t(p[n]["bias"])
               for n in ("query", "key", "value"))
    parts = [ref_attend(*(t.chunk(len(axes), dim=-2)[i] for t in (q, k, v)), axis) for i, axis in enumerate(axes)]
    return torch.einsum("...hk,hkd->...d", torch.cat(parts, dim=-2), _t(p["out"]["kernel"])) + _t(p["out"]["bias"])


def ref_embed(x, p):
    """temporal_encode: a VALID Conv of kernel (t, h, w, C, D) and equal stride on (B, T, H, W, C) frames, or, with a
    2D kernel, 'temporal_sampling': frames stacked along the height and a 2D Conv; tokens in (t, h, w) order."""
    k = _t(p["kernel"])
    if k.ndim == 4:
        x = x.reshape(x.shape[0], 1, -1, *x.shape[3:])  # (B, 1, T·H, W, C)
        k = k[None]
    (kt, kh, kw), (b, t, h, w, c) = k.shape[:3], x.shape
    patches = x.reshape(b, t // kt, kt, h // kh, kh, w // kw, kw, c)
    out = torch.einsum("bTtHhWwc,thwcd->bTHWd", patches, k) + _t(p["bias"])
    return out.reshape(b, -1, out.shape[-1])


def ref_encoder(x, p, block_fn, nt: int | None = None):
    """Encoder: positional embedding on (B, N, D), then (model 4: on (B, t, hw, D)) the blocks, encoder_norm."""
    shape = x.shape
    x = x + _t(p["posembed_input"]["pos_embedding"])
    x = x if nt is None else x.reshape(shape[0], nt, -1, shape[-1])
    for i in range(len([k for k in p if k.startswith("encoderblock_")])):
        x = block_fn(x, p[f"encoderblock_{i}"])
    return ref_ln(x.reshape(shape), p["encoder_norm"])


def ref_block(x, p, axes=(1,)):
    x = x + ref_mha(ref_ln(x, p["LayerNorm_0"]), p["MultiHeadDotProductAttention_0"], list(axes))
    return x + ref_mlp(ref_ln(x, p["LayerNorm_1"]), p["MlpBlock_0"])


def ref_fsa_block(x, p, nt: int, order=("time", "space")):
    """EncoderFactorizedSelfAttentionBlock: (B, t·hw, D) -> (B, t, hw, D), attention per axis in order."""
    b, n, d = x.shape
    x = x.reshape(b, nt, n // nt, d)
    for name in order:
        axis = 1 if name == "time" else 2
        x = x + ref_mha(ref_ln(x, p[f"LayerNorm_{name}"]), p[f"MultiHeadDotProductAttention_{name}"], [axis])
    x = x.reshape(b, n, d)
    return x + ref_mlp(ref_ln(x, p["LayerNorm_mlp"]), p["MlpBlock"])


def ref_readout(x, tree, name: str = "cls"):
    return x[:, 0] if name in tree else x.mean(dim=1)  # classifier 'token' or 'gap'


def scenic_forward(tree: dict, video: torch.Tensor, model: int, order=("time", "space")) -> torch.Tensor:
    """Scenic's ViViT (models 1, 3, 4) / SpaceTimeViViT (model 2) on a (B, C, T, H, W) clip."""
    x = video.permute(0, 2, 3, 4, 1)  # Scenic takes (B, T, H, W, C)
    tokens = ref_embed(x, tree["embedding"])
    nt = tokens.shape[1] // (S // P) ** 2
    if model == 2:
        b = tokens.shape[0]
        x = tokens.reshape(b * nt, -1, D)  # vmap over time: one spatial transformer per temporal index
        if "cls_SpatialTransformer" in tree:
            x = torch.cat([_t(tree["cls_SpatialTransformer"]).expand(x.shape[0], 1, D), x], dim=1)
        x = ref_encoder(x, tree["SpatialTransformer"], ref_block)
        x = ref_readout(x, tree, "cls_SpatialTransformer").reshape(b, nt, D)
        if "TemporalTransformer" in tree:
            if "cls_TemporalTransformer" in tree:
                x = torch.cat([_t(tree["cls_TemporalTransformer"]).expand(b, 1, D), x], dim=1)
            x = ref_readout(ref_encoder(x, tree["TemporalTransformer"], ref_block), tree, "cls_TemporalTransformer")
        else:
            x = x.mean(dim=1)  # spatial_only_baseline
    else:
        x = tokens
        if "cls" in tree:
            x = torch.cat([_t(tree["cls"]).expand(x.shape[0], 1, D), x], dim=1)
        if model == 1:
            x = ref_encoder(x, tree["Transformer"], ref_block)
        elif model == 3:
            x = ref_encoder(x, tree["Transformer"], lambda y, p: ref_fsa_block(y, p, nt, order))
        else:  # (B, t, hw, D); the first half of the heads over t (axis 1), the second over hw (axis 2)
            axes = [1, 2] if order[0] == "time" else [2, 1]
            x = ref_encoder(x, tree["Transformer"], lambda y, p: ref_block(y, p, axes), nt)
        x = ref_readout(x, tree)
    return ref_dense(x, tree["output_projection"])


# ---------------------------------------------------------------- loading, exactly and with Scenic's conventions

CASES = [  # (ViViT model, classifier, tubelet t, temporal depth, train-state era)
    (1, "token", 2, 0, "released"), (1, "gap", 1, 0, "optax"), (2, "token", 2, 2, "released"),
    (2, "gap", 2, 1, "optax"), (2, "token", 2, 0, "target.params"), (3, "gap", 2, 0, "released"),
    (4, "gap", 2, 0, "optax"),
]
IDS = [f"model{m}-{c}-t{t}-lt{lt}-{era}" for m, c, t, lt, era in CASES]


@pytest.mark.parametrize("model, classifier, tubelet, temporal_depth, era", CASES, ids=IDS)
def test_scenic_vivit_matches_scenic(tmp_path, model, classifier, tubelet, temporal_depth, era):
    tree = scenic_params(model, classifier, tubelet, temporal_depth)
    path = write_flax(tmp_path / "checkpoint_30000", train_state(tree, era))
    obj = read_file(path)
    assert detect_scenic_vivit(obj) and FORMATS["scenic_vivit"].detect(obj)
    name = "vivit_tiny_fdp" if model == 4 else None  # models 1 and 4 have the same parameters
    # a joint t·h·w embedding does not say its crop (224² assumed), the spatial-only baseline not its frames (32)
    size = {"img_size": S} if model != 2 else {} if temporal_depth else {"num_frames": T}
    converted = convert_scenic_vivit(obj, str(path), name, size)
    cfg = converted.config
    assert cfg["model"] == model and cfg["act"] == "gelu_tanh" and (cfg["num_frames"], cfg["img_size"]) == (T, S)
    assert cfg.get("classifier", "token") == (classifier if model != 2 or temporal_depth else "token")
    assert cfg["tubelet_t"] == tubelet and cfg["patch_size"] == P and cfg["num_classes"] == CLASSES
    assert converted.preprocessing.mean == (0.5,) * 3 and converted.preprocessing.std == (0.5,) * 3
    net = from_converted(converted)
    x = torch.randn(B, C, T, S, S)
    with torch.no_grad():
        ours = net(x)
    torch.testing.assert_close(ours, scenic_forward(tree, x, model), rtol=1e-4, atol=1e-5)
    if model in (3, 4):  # the order Scenic uses is load-bearing: the paper's default "st" computes something else
        assert cfg["order"] == "ts"
        other = from_converted(convert_scenic_vivit(obj, str(path), name, size | {"order": "st"}))
        with torch.no_grad():
            torch.testing.assert_close(other(x), scenic_forward(tree, x, model, ("space", "time")),
                                       rtol=1e-4, atol=1e-5)
            assert not torch.allclose(other(x), ours, atol=1e-3)


def test_scenic_gelu_is_the_tanh_approximation(tmp_path):
    tree = scenic_params(1)
    obj = train_state(tree, "released")
    converted = convert_scenic_vivit(obj, "mem", None, {"act": "gelu", "img_size": S})
    x = torch.randn(B, C, T, S, S)
    with torch.no_grad():
        exact_gelu = from_converted(converted)(x)
        tanh_gelu = from_converted(convert_scenic_vivit(obj, "mem", None, {"img_size": S}))(x)
    torch.testing.assert_close(tanh_gelu, scenic_forward(tree, x, 1), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(exact_gelu, tanh_gelu, atol=1e-5)


def test_model4_time_heads_first_is_explicit_per_head_attention():
    """Model 4 with order "ts": head i < h/2 attends over t at each (h, w), head i >= h/2 over (h, w) in each t."""
    net = create_model("vivit_tiny_fdp", order="ts").eval()
    attn = net.blocks[0].attns[0]
    grid_t, n = 2, 4
    x = torch.randn(2, grid_t * n * n, 64)
    with torch.no_grad():
        out = attn(x, Grid(t=grid_t, h=n, w=n))
        q, k, v = attn.qkv(x).reshape(2, grid_t, n * n, 3, attn.num_heads, attn.head_dim).unbind(3)
        heads = []
        for h in range(attn.num_heads):
            qh, kh, vh = q[..., h, :], k[..., h, :], v[..., h, :]  # (B, t, hw, d)
            if h < attn.num_heads // 2:  # over time: sequences along t
                qh, kh, vh = (u.transpose(1, 2) for u in (qh, kh, vh))
            w = (qh @ kh.transpose(-1, -2) / attn.head_dim ** 0.5).softmax(-1)
            o = w @ vh
            heads.append(o.transpose(1, 2) if h < attn.num_heads // 2 else o)
        ref = attn.proj(torch.cat(heads, dim=-1).reshape(2, -1, 64))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_load_scenic_vivit_and_the_registry_defaults_stay(tmp_path):
    path = write_flax(tmp_path / "checkpoint", train_state(scenic_params(3, "gap"), "released"))
    net = load_scenic_vivit(path, num_frames=T)  # the other way to fix the t·h·w split
    assert not net.training and net.cfg.order == "ts" and net.cfg.act == "gelu_tanh" and net.cfg.model == 3
    default = create_model("vivit_tiny_fsa")  # the paper's reading stays our default
    assert default.cfg.order == "st" and default.cfg.act == "gelu" and default.cfg.classifier == "gap"
    assert create_model("vivit_tiny_joint").cfg.classifier == "token"


def test_scenic_checkpoint_errors(tmp_path):
    tree = scenic_params(1)
    path = write_flax(tmp_path / "checkpoint", train_state(tree, "released"))
    with pytest.raises(CheckpointError, match="not tensors"):  # a nested train state, never a raw IndexError
        read_state_dict(path)
    with pytest.raises(CheckpointError, match="ViViT model 1 .*not the requested model 4.*no cls token"):
        convert_scenic_vivit(read_file(path), str(path), "vivit_tiny_fdp", {"img_size": S})
    with pytest.raises(CheckpointError, match="not a ViViT architecture"):
        convert_scenic_vivit(read_file(path), str(path), "mvit_tiny")
    with pytest.raises(CheckpointError, match="not a Scenic ViViT checkpoint .*found \\['weights'\\]"):
        convert_scenic_vivit({"weights": {}}, "x.msgpack")
    with pytest.raises(CheckpointError, match=r"8 grid tokens are not t·h·w tokens of clips with img_size=24"):
        convert_scenic_vivit(train_state(scenic_params(3, "gap"), "released"), "mem", None, {"img_size": 24})
    with pytest.raises(CheckpointError, match="cls token in a factorised self-attention ViViT"):
        convert_scenic_vivit(train_state(scenic_params(3, "token"), "released"), "mem", None, {"img_size": S})
    with pytest.raises(CheckpointError, match="pre_logits"):
        convert_scenic_vivit(train_state(tree | {"pre_logits": _dense(np.random.default_rng(0), D, D)}, "released"),
                             "mem", None, {"img_size": S})
    bad = dict(tree, Transformer=dict(tree["Transformer"], extra={"kernel": np.zeros(2, np.float32)}))
    with pytest.raises(CheckpointMismatchError, match="Transformer/extra/kernel"):
        convert_scenic_vivit(train_state(bad, "released"), "mem", None, {"img_size": S})
    wrong = from_converted(convert_scenic_vivit(train_state(tree, "released"), "mem", None, {"img_size": S}))
    frames = train_state(scenic_params(1, "token", 1), "released")  # uniform frame sampling: a 2D kernel
    converted = convert_scenic_vivit(frames, "mem", None, {"img_size": S})
    with pytest.raises(CheckpointMismatchError, match="patch_embed.proj.weight"):  # tubelet 2 vs frames
        load_checked(wrong, converted.state_dict, "mem")
