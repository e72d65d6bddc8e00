"""MSCA and TokenShift: the shift operators, exactness against direct implementations of Eq. 8, 17-18 and
21-23, identities with the frame-wise ViT, weights, MACs and bad configs."""
import math

import pytest
import torch
from torch import nn

from videoformer.analysis.flops import count_macs
from videoformer.layers import AxisAttention, Block, ClsShift, FrameShift, Grid, Grouping, Sublayer, fused_attention
from videoformer.layers import FrameGrid
from videoformer.layers.shift import shift_frames
from videoformer.models import create_model
from videoformer.models.msca import HEAD_VARIANTS, PATCH_VARIANTS, VARIANTS, msca_sublayer

D, HEADS, T, B, TOKENS = 16, 4, 3, 2, 5  # tiny attention tests: 1 CLS + 2x2 patches per frame
GRID = FrameGrid(t=1, h=2, w=2, prefix=1, frames=T)


def clip(b=2, t=4, s=32):
    return torch.randn(b, 3, t, s, s)


def source(t: int, i: int, back: int, fwd: int, boundary: str) -> int | None:
    """Frame read by frame ``t`` at slice index ``i`` (head or token); ``None``: zero padding."""
    s = t - 1 if i < back else t + 1 if i < back + fwd else t
    if 0 <= s < T:
        return s
    return s % T if boundary == "circular" else None


def reference_msca(x, attn, variant, back, fwd, boundary):
    """Eq. 12-23 written out frame by frame, head by head, token by token, from the fused qkv weights."""
    d = D // HEADS
    q, k, v = (x @ w.T + b for w, b in zip(attn.qkv.weight.chunk(3), attn.qkv.bias.chunk(3)))
    frames = [tuple(m.view(B, T, TOKENS, HEADS, d)[:, t] for m in (q, k, v)) for t in range(T)]
    out = torch.empty(B, T, TOKENS, HEADS, d)
    for t in range(T):
        for i in range(HEADS):
            mats = []
            for m, name in enumerate("QKV"):
                if name not in variant:
                    mats.append(frames[t][m][:, :, i])
                elif variant.startswith("p"):  # Eq. 21: token n from frame t-1 / t+1
                    rows = []
                    for n in range(TOKENS):
                        s = source(t, n, back, fwd, boundary)
                        rows.append(torch.zeros(B, d) if s is None else frames[s][m][:, n, i])
                    mats.append(torch.stack(rows, dim=1))
                else:  # Eq. 17-18: head i from frame t-1 / t+1
                    s = source(t, i, back, fwd, boundary)
                    mats.append(torch.zeros(B, TOKENS, d) if s is None else frames[s][m][:, :, i])
            qi, ki, vi = mats
            out[:, t, :, i] = torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(d), dim=-1) @ vi  # Eq. 13-14
    return attn.proj(out.reshape(B * T, TOKENS, D))


def tiny_attention(variant="KV", back=1, fwd=1, boundary="zero", identity_proj=False):
    msa = AxisAttention(D, HEADS, [Grouping(("t", "h", "w"))])
    nn.init.normal_(msa.qkv.bias)
    if identity_proj:  # the output is then the concatenated heads
        nn.init.eye_(msa.proj.weight)
        nn.init.zeros_(msa.proj.bias)
    return msa, msca_like(msa, variant, back, fwd, boundary)


def msca_like(msa, variant, back, fwd, boundary):
    """The MSCA sublayer with the weights of the frame-wise MSA ``msa``."""
    attn = AxisAttention(D, HEADS, msca_sublayer(variant, back, fwd, boundary))
    attn.load_state_dict(msa.state_dict())
    return attn


# ---- the shift operator -------------------------------------------------------------------------------------

def test_shift_frames_zero_and_circular():
    x = torch.arange(2 * 3 * 4).float().view(2 * 3, 4)  # 2 clips x 3 frames x 4 channels
    clips = x.view(2, 3, 4)
    zero = shift_frames(x, 3, 1, 1, 2).view(2, 3, 4)
    circ = shift_frames(x, 3, 1, 1, 2, "circular").view(2, 3, 4)
    for t in range(3):
        assert torch.equal(zero[:, t, 0], clips[:, t - 1, 0] if t > 0 else torch.zeros(2))
        assert torch.equal(circ[:, t, 0], clips[:, (t - 1) % 3, 0])
        for c in (1, 2):
            assert torch.equal(zero[:, t, c], clips[:, t + 1, c] if t < 2 else torch.zeros(2))
            assert torch.equal(circ[:, t, c], clips[:, (t + 1) % 3, c])
        assert torch.equal(zero[:, t, 3], clips[:, t, 3]) and torch.equal(circ[:, t, 3], clips[:, t, 3])
    assert torch.equal(shift_frames(x, 3, 1, 0, 0), x)


def test_shift_frames_bad_input():
    x = torch.zeros(6, 4)
    with pytest.raises(ValueError, match="back=3 \\+ fwd=2"):
        shift_frames(x, 3, 1, 3, 2)
    with pytest.raises(ValueError, match="frames=4"):
        shift_frames(x, 4, 1, 1, 1)
    with pytest.raises(ValueError, match="T=1"):
        shift_frames(x, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="boundary"):
        shift_frames(x, 3, 1, 1, 1, "reflect")


# ---- MSCA sublayer: exactness -----------------------------------------------------------------------------------

@pytest.mark.parametrize("boundary", ["zero", "circular"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_msca_matches_direct_equations(variant, boundary):
    back, fwd = (1, 2) if variant in HEAD_VARIANTS else (2, 1)
    _, attn = tiny_attention(variant, back, fwd, boundary)
    x = torch.randn(B * T, TOKENS, D)
    expected = reference_msca(x, attn, variant, back, fwd, boundary)
    for fused in (True, False):
        with fused_attention(fused, attn):
            torch.testing.assert_close(attn(x, GRID), expected, rtol=1e-5, atol=1e-5)


def test_msca_kv_heads_explicitly():
    """Eq. 17 for h_b = h_f = 1: head 0 of frame t is softmax(Q_t K_{t-1}ᵀ/√d) V_{t-1}, head 1 uses t+1."""
    _, attn = tiny_attention("KV", 1, 1, identity_proj=True)
    x = torch.randn(B * T, TOKENS, D)
    q, k, v = (m.view(B, T, TOKENS, HEADS, D // HEADS) for m in attn.qkv(x).chunk(3, dim=-1))
    out = attn(x, GRID).view(B, T, TOKENS, HEADS, D // HEADS)

    def head(i, tq, tkv):
        a = torch.softmax(q[:, tq, :, i] @ k[:, tkv, :, i].transpose(1, 2) / math.sqrt(D // HEADS), dim=-1)
        return a @ v[:, tkv, :, i]

    torch.testing.assert_close(out[:, 1, :, 0], head(0, 1, 0))
    torch.testing.assert_close(out[:, 1, :, 1], head(1, 1, 2))
    torch.testing.assert_close(out[:, 2, :, 2], head(2, 2, 2))
    assert torch.equal(out[:, 0, :, 0], torch.zeros_like(out[:, 0, :, 0]))  # zero padding: no frame -1
    assert torch.equal(out[:, T - 1, :, 1], torch.zeros_like(out[:, 0, :, 1]))  # no frame T


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_msca_qkv_is_a_shift_of_the_attention_output(boundary):
    """The paper's remark: MSCA-QKV = frame-wise MSA heads computed per frame, then shifted."""
    msa, attn = tiny_attention("QKV", 1, 2, boundary, identity_proj=True)
    x = torch.randn(B * T, TOKENS, D)
    heads = msa(x, Grid(t=1, h=2, w=2, prefix=1)).view(B * T, TOKENS, HEADS, D // HEADS)
    expected = shift_frames(heads, T, 2, 1, 2, boundary).view(B * T, TOKENS, D)
    torch.testing.assert_close(attn(x, GRID), expected)


def test_zero_and_circular_differ_only_at_the_boundary_frames():
    msa, zero = tiny_attention("KV", 1, 1, "zero")
    circ = msca_like(msa, "KV", 1, 1, "circular")
    x = torch.randn(B * T, TOKENS, D)
    a, b = zero(x, GRID).view(B, T, TOKENS, D), circ(x, GRID).view(B, T, TOKENS, D)
    torch.testing.assert_close(a[:, 1:-1], b[:, 1:-1])
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-3 and (a[:, -1] - b[:, -1]).abs().max() > 1e-3


def test_msca_needs_the_frame_count():
    _, attn = tiny_attention()
    with pytest.raises(ValueError, match="FrameGrid"):
        attn(torch.randn(B * T, TOKENS, D), Grid(t=1, h=2, w=2, prefix=1))


# ---- TokenShift -------------------------------------------------------------------------------------------------

def reference_token_shift(z, frames, d_b, d_f):
    """Eq. 8-9 with zero padding, element by element over frames and channels."""
    out = z.clone().view(-1, frames, *z.shape[1:])
    src = z.view(-1, frames, *z.shape[1:])
    for t in range(frames):
        for d in range(d_b + d_f):
            s = t - 1 if d < d_b else t + 1
            out[:, t, 0, d] = src[:, s, 0, d] if 0 <= s < frames else 0.0
    return out.view_as(z)


def test_token_shift_block_is_eq_4_to_9():
    frame = Sublayer((Grouping(("t", "h", "w")),))
    block = Block(D, HEADS, [frame])
    shifted = Block(D, HEADS, [frame], pre=ClsShift(3, 5))
    shifted.load_state_dict(block.state_dict(), strict=True)  # the same parameters under the same names
    z = torch.randn(B * T, TOKENS, D)
    frame_grid = Grid(t=1, h=2, w=2, prefix=1)
    z1 = reference_token_shift(z, T, 3, 5)  # Eq. 4
    z2 = block.attns[0](block.norms[0](z1), frame_grid) + z1  # Eq. 5
    z3 = reference_token_shift(z2, T, 3, 5)  # Eq. 6
    expected = block.mlp(block.norm_mlp(z3)) + z3  # Eq. 7
    torch.testing.assert_close(shifted(z, GRID), expected)


def test_token_shift_defaults_to_a_quarter_of_the_channels_each_way():
    model = create_model("tokenshift_tiny")
    assert all((b.pre.back, b.pre.fwd) == (16, 16) for b in model.blocks)
    assert all((b.pre.back, b.pre.fwd) == (192, 192) for b in _meta("tokenshift_b16").blocks)


# ---- models: identities with the frame-wise ViT -----------------------------------------------------------------

ZERO_SHIFT = [("msca_tiny", dict(variant=v, heads_back=0, heads_fwd=0)) for v in HEAD_VARIANTS] + [
    ("msca_tiny", dict(variant=v, tokens_back=0, tokens_fwd=0)) for v in PATCH_VARIANTS] + [
    ("tokenshift_tiny", dict(channels_back=0, channels_fwd=0))]


def _framewise_pair(name, **overrides):
    vit = create_model("vit_tiny_framewise").eval()
    model = create_model(name, **overrides).eval()
    model.load_state_dict(vit.state_dict(), strict=True)
    return vit, model


@pytest.mark.parametrize("name, overrides", ZERO_SHIFT)
def test_zero_shift_is_the_framewise_vit(name, overrides):
    vit, model = _framewise_pair(name, **overrides)
    x = clip()
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit(x), rtol=0, atol=1e-6)


SHIFTED = [("msca_tiny", dict(variant=v, boundary="circular")) for v in VARIANTS] + [
    ("tokenshift_tiny", dict(boundary="circular"))]


@pytest.mark.parametrize("name, overrides", SHIFTED)
def test_identical_frames_circular_is_the_framewise_vit(name, overrides):
    """With every frame the same, reading frame t±1 reads frame t (no boundary with a circular shift)."""
    vit, model = _framewise_pair(name, **overrides)
    x = clip(t=1).expand(-1, -1, 4, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), vit.forward_features(x), rtol=0, atol=1e-6)
        y = clip()  # and the shift does change the features of a real clip
        assert (model.forward_features(y) - vit.forward_features(y)).abs().max() > 1e-3


def test_msca_only_in_the_last_k_blocks():
    model = create_model("msca_tiny", depth=3, msca_blocks=2).eval()
    kinds = [type(b.attns[0].spec.qkv_hook) for b in model.blocks]
    assert kinds == [type(None), FrameShift, FrameShift]
    vit = create_model("vit_tiny_framewise", depth=3).eval()
    vit.load_state_dict(model.state_dict(), strict=True)
    outs = {}
    for tag, m in (("vit", vit), ("msca", model)):
        for i, b in enumerate(m.blocks):
            b.register_forward_hook(lambda _m, _i, out, key=(tag, i): outs.__setitem__(key, out))
    x = clip()
    with torch.no_grad():
        vit(x), model(x)
    torch.testing.assert_close(outs[("msca", 0)], outs[("vit", 0)], rtol=0, atol=1e-6)
    assert (outs[("msca", 1)] - outs[("vit", 1)]).abs().max() > 1e-4
    none = create_model("msca_tiny", msca_blocks=0)
    assert all(b.attns[0].spec.qkv_hook is None for b in none.blocks)


# ---- weights and cost ---------------------------------------------------------------------------------------------

def _meta(name, **overrides):
    with torch.device("meta"):
        return create_model(name, **overrides)


@pytest.mark.parametrize("name", ["msca_b16", "msca_b16_patch", "tokenshift_b16"])
def test_same_parameters_and_macs_as_the_framewise_vit(name):
    vit, model = _meta("vit_b16_framewise"), _meta(name)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in vit.state_dict().items()}
    shape = (3, 8, 224, 224)
    macs, vit_macs = count_macs(model, shape).macs, count_macs(vit, shape).macs
    assert macs == vit_macs and macs > 0
    with fused_attention(False, model):
        assert count_macs(model, shape).macs == vit_macs


@pytest.mark.parametrize("name", ["msca_tiny", "msca_tiny_patch", "tokenshift_tiny"])
def test_tiny_models_load_the_framewise_vit_and_train(name):
    _, model = _framewise_pair(name)
    model.train()
    for frames in (2, 4, 5):
        y = model(clip(t=frames))
        assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    x = clip()
    with torch.no_grad(), fused_attention(False, model):
        manual = model(x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), manual, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="T=1"):
        model(clip(t=1))


# ---- bad configs ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, overrides, message", [
    ("msca_tiny", dict(heads_back=3, heads_fwd=2), "heads_back=3 \\+ heads_fwd=2 .* num_heads=4"),
    ("msca_tiny", dict(variant="QQ"), "unknown MSCA variant 'QQ'"),
    ("msca_tiny", dict(variant="kv"), "unknown MSCA variant 'kv'"),
    ("msca_tiny", dict(msca_blocks=3), "msca_blocks=3 .* depth=2"),
    ("msca_tiny_patch", dict(tokens_back=10, tokens_fwd=8), "tokens_back=10 \\+ tokens_fwd=8 .* 17 tokens"),
    ("msca_tiny", dict(boundary="reflect"), "boundary 'reflect'"),
    ("tokenshift_tiny", dict(channels_back=40, channels_fwd=40), "channels_back=40 \\+ channels_fwd=40 .* dim=64"),
    ("tokenshift_tiny", dict(class_token=False), "class_token"),
])
def test_bad_configs(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, **overrides)


def test_msca_sublayer_rejects_too_many_heads():
    with pytest.raises(ValueError, match="back=3 \\+ fwd=2 .* num_heads=4"):
        AxisAttention(D, HEADS, msca_sublayer("KV", 3, 2))


def test_msca_only_replaces_a_frame_wise_msa():
    temporal = Sublayer((Grouping(("t",)),), "exclude", qkv_hook=FrameShift(1, 1))
    with pytest.raises(ValueError, match="frame-wise MSA"):
        AxisAttention(D, HEADS, temporal)


@pytest.mark.parametrize("name, overrides", [
    ("msca_tiny", dict(heads_back=0, heads_fwd=0)), ("msca_tiny_patch", dict(tokens_back=0, tokens_fwd=0)),
    ("tokenshift_tiny", dict(channels_back=0, channels_fwd=0))])
def test_init_from_a_hugging_face_image_vit(tmp_path, name, overrides):
    """Image-ViT initialisation reaches the MSCA / TokenShift parameters: with zero shift the model is the
    image ViT on every frame, frame logits averaged (the frame-wise ViT of the paper)."""
    transformers = pytest.importorskip("transformers")
    from videoformer.weights.inflate import init_from_image

    cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                                 image_size=32, patch_size=8, num_labels=10)
    hf = transformers.ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    model = create_model(name, norm_eps=cfg.layer_norm_eps, **overrides).eval()
    init_from_image(model, tmp_path, load_head=True)
    x = clip()
    with torch.no_grad():
        ref = torch.stack([hf(x[:, :, t]).logits for t in range(x.shape[2])]).mean(dim=0)
        assert (model(x) - ref).abs().max() < 1e-4
        shifted = create_model(name, norm_eps=cfg.layer_norm_eps).eval()
        init_from_image(shifted, tmp_path, load_head=True)
        assert (shifted(x) - ref).abs().max() > 1e-3  # the shifted model reads other frames
