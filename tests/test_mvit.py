"""MViT v1: the pooling operator and pooling attention by definition, the multiscale model on the tiny config,
the paper's parameter / GMAC tables on the meta device, and the frame-shuffle helper (Table 9)."""
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import videoformer.layers.attention as attention_mod
from videoformer.analysis.flops import count_model
from videoformer.analysis.shuffle import shuffle_frames
from videoformer.layers import Grid, fused_attention
from videoformer.layers.pooling import Pool, PoolingAttention, default_kernel, make_pool
from videoformer.models import MViTConfig, create_model, model_config

MODES = ("max", "avg", "conv")


def clip(b=2, t=4, s=32):
    return torch.randn(b, 3, t, s, s)


def tokens(grid: Grid, b=2, c=8):
    return torch.randn(b, grid.prefix + grid.numel, c)


# ---------------------------------------------------------------- paper tables (meta device, count_macs)

# (name, overrides, params in M, GMACs): MViT Tables 3, 4, 5, 15, 16, 17. mvit_b_16x4 is the released model
# (3×3×3 pooling kernels, Table 15's last row); pool_kernel=None is Table 15's k = s + 1 rows (conv, max).
TABLE = [
    ("mvit_b_16x4", {}, 36.6, 70.5),
    ("mvit_b_16x4", {"pool_kernel": None}, 36.6, 70.5),
    ("mvit_b_16x4", {"pool_mode": "max", "pool_kernel": None}, 36.5, 70.5),
    ("mvit_b_32x3", {}, 36.6, 170.0),
    ("mvit_b_64x3", {}, 36.6, 455.0),
    ("mvit_s", {}, 26.1, 32.9),
    ("mvit_b24_32x3", {}, 52.9, 236.0),
    ("mvit_b16_image", {}, 37.0, 7.8),
    ("mvit_b16_image", {"pool_mode": "max"}, 37.0, 7.8),
    ("vit_b16_joint_baseline", {}, 87.2, 179.6),
]
IDS = [f"{n}-{'-'.join(map(str, o.values())) or 'default'}" for n, o, *_ in TABLE]


def test_mvit_b_16x4_is_the_released_model():
    """36,610,672 parameters and 70.599 GMACs: torchvision's ``mvit_v1_b`` metadata for the ported K400 weights
    (num_params, _ops) and PySlowFast's MVIT_B_16x4_CONV (3×3×3 kernels on every Q and K/V pool, stage 4's
    stride-1 K/V pools included); the paper's tables round them to 36.6M / 70.5 GFLOPs."""
    report = count_model("mvit_b_16x4")
    assert report.params == 36_610_672
    assert report.gmacs == pytest.approx(70.599, abs=0.001)
    cfg = model_config("mvit_b_16x4")
    with torch.device("meta"):
        model = create_model("mvit_b_16x4")
    pools = [(b.attn.pool_q, b.attn.pool_k) for b in model.blocks]
    assert all(k is not None and k.kernel == (3, 3, 3) and k.norm is not None for _, k in pools)  # stage 4 too
    assert [i for i, (q, _) in enumerate(pools) if q is not None] == [1, 3, 14]  # Q pools at the stage starts
    assert all(q.kernel == (3, 3, 3) and q.stride == (1, 2, 2) for q, _ in pools if q is not None)
    assert cfg.pool_kernel == (3, 3, 3) and pools[-1][1].stride == (1, 1, 1)


@pytest.mark.parametrize("name, overrides, params, _", TABLE, ids=IDS)
def test_params_match_the_paper(name, overrides, params, _):
    report = count_model(name, **overrides)
    assert report.params / 1e6 == pytest.approx(params, rel=0.01)


MVIT_S_GAP = pytest.mark.xfail(strict=True, reason=(
    "MViT-S (Table 3c) counts 29.8 GMACs, not 32.9: the table's cube row and K/V strides are not legible in the "
    "paper and no official config exists; stages / widths / depths as Table 3c give 25.96M params (-0.6%)"))
GMAC_TABLE = [pytest.param(*row, marks=MVIT_S_GAP) if row[0] == "mvit_s" else row for row in TABLE]


@pytest.mark.parametrize("name, overrides, _, gmacs", GMAC_TABLE, ids=IDS)
def test_gmacs_match_the_paper(name, overrides, _, gmacs):
    report = count_model(name, **overrides)
    assert report.gmacs == pytest.approx(gmacs, rel=0.02)


@pytest.mark.parametrize("pos_embed, params", [("none", 36.2), ("space", 36.5), ("joint", 38.6), ("separable", 36.5)])
def test_table11_positional_embeddings(pos_embed, params):
    report = count_model("mvit_b_16x4", pool_mode="max", pool_kernel=None, pos_embed=pos_embed)  # ablation setting
    assert report.params / 1e6 == pytest.approx(params, rel=0.005)
    assert report.gmacs == pytest.approx(70.5, rel=0.02)  # the same for every variant


def test_mvit_b_stage_layout():
    """Table 3b: widths 96-768, heads 1-8 (96 channels each), depths [1, 2, 11, 2] (Table 13 V5), adaptive K/V."""
    cfg = model_config("mvit_b_16x4")
    assert cfg.stage_depths == (1, 2, 11, 2) and cfg.depth == 16
    assert cfg.stage_dims == (96, 192, 384, 768) and cfg.stage_heads == (1, 2, 4, 8)
    assert cfg.stage_kv_strides == ((1, 8, 8), (1, 4, 4), (1, 2, 2), (1, 1, 1))
    with torch.device("meta"):
        model = create_model("mvit_b_16x4")
    x, grid = model.patch_embed(torch.empty(1, 3, 16, 224, 224, device="meta"))
    assert grid == Grid(t=8, h=56, w=56) and x.shape == (1, 8 * 56 * 56, 96)
    grid, kv = grid.replace(prefix=1), set()
    x = torch.empty(1, 1 + grid.numel, 96, device="meta")
    outputs = []
    for block in model.blocks:
        if block.attn.pool_k is not None:
            kv.add(block.attn.pool_k.out_grid(grid) if block.attn.pool_q is None else None)
        x, grid = block(x, grid)
        outputs.append((grid.t, grid.h, grid.w, x.shape[-1]))
    assert outputs[0] == (8, 56, 56, 192)  # channel expansion in the last MLP of stage 1
    assert outputs[2] == (8, 28, 28, 384) and outputs[13] == (8, 14, 14, 768) and outputs[15] == (8, 7, 7, 768)
    assert kv - {None} == {Grid(t=8, h=7, w=7, prefix=1)}  # K/V resolution fixed across stages


# ---------------------------------------------------------------- the pooling operator P(·; k, s, p)

@pytest.mark.parametrize("mode", MODES)
def test_pool_matches_its_definition_and_never_pools_cls(mode):
    grid = Grid(t=4, h=8, w=8, prefix=1)
    pool = Pool(mode, 8, stride=(2, 2, 2))
    assert pool.kernel == (3, 3, 3) and pool.padding == (1, 1, 1)  # k = s + 1, shape-preserving
    x = tokens(grid)
    y, new = pool(x, grid)
    assert new == Grid(t=2, h=4, w=4, prefix=1) and y.shape == (2, 1 + 32, 8)
    body = rearrange(x[:, 1:], "b (t h w) c -> b c t h w", t=4, h=8, w=8)
    ref = {"max": lambda v: F.max_pool3d(v, 3, 2, 1), "avg": lambda v: F.avg_pool3d(v, 3, 2, 1),
           "conv": lambda v: F.conv3d(v, pool.pool.weight, None, 2, 1, groups=8)}[mode](body)
    ref = torch.cat([x[:, :1], rearrange(ref, "b c t h w -> b (t h w) c")], dim=1)
    if mode == "conv":  # learnable channel-wise conv followed by LayerNorm over every token
        ref = F.layer_norm(ref, (8,), pool.norm.weight, pool.norm.bias, pool.norm.eps)
    torch.testing.assert_close(y, ref)
    cls = x[:, :1] if mode != "conv" else F.layer_norm(x[:, :1], (8,), pool.norm.weight, pool.norm.bias, 1e-6)
    torch.testing.assert_close(y[:, :1], cls)  # the CLS token only passes through (LayerNorm in conv mode)


def test_pool_geometry():
    assert default_kernel((1, 8, 8)) == (1, 9, 9) and default_kernel((2, 4, 1)) == (3, 5, 1)
    assert make_pool("conv", 8, (1, 1, 1)) is None  # no pooling with a 1×1×1 kernel and stride
    assert make_pool("conv", 8, (1, 1, 1), kernel=(3, 3, 3)) is not None  # released configs pool at stride 1
    grid = Grid(t=2, h=6, w=6, prefix=1)
    y, new = Pool("max", 8, (1, 1, 1), kernel=(3, 3, 3))(tokens(grid), grid)
    assert new == grid and y.shape[1] == 1 + 72
    # a stride that does not divide the grid floors it, ⌊(L + 2p − k)/s⌋ + 1, as the official pooling does
    y, new = Pool("max", 8, (1, 4, 4))(tokens(grid), grid)  # kernel 1×5×5, padding 0×2×2: 6 -> 2
    body = rearrange(tokens(grid)[:, 1:], "b (t h w) c -> b c t h w", t=2, h=6, w=6)
    assert new == Grid(t=2, h=2, w=2, prefix=1) and y.shape[1] == 1 + 8
    assert F.max_pool3d(body, (1, 5, 5), (1, 4, 4), (0, 2, 2)).shape[2:] == (2, 2, 2)
    single = Grid(t=2, h=1, w=1, prefix=1)
    with pytest.raises(ValueError, match=r"token grid T×H×W = 2×1×1 is too small for pooling kernel 1×2×2"):
        Pool("max", 8, (1, 2, 2), kernel=(1, 2, 2))(tokens(single), single)
    with pytest.raises(ValueError, match="cannot preserve shape"):
        Pool("max", 8, (1, 1, 1), kernel=(2, 3, 3))
    with pytest.raises(ValueError, match="pooling mode"):
        Pool("median", 8, (1, 2, 2))
    with pytest.raises(ValueError, match="do not match"):
        Pool("max", 8, (1, 2, 2))(torch.randn(2, 10, 8), grid)


# ---------------------------------------------------------------- pooling attention (MHPA)

def manual_mhpa(attn: PoolingAttention, x: torch.Tensor, grid: Grid, pool_fn) -> torch.Tensor:
    """softmax(P(Q) P(K)ᵀ / √d) P(V), written out head by head."""
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    heads = []
    for h in range(attn.num_heads):
        sl = slice(h * attn.head_dim, (h + 1) * attn.head_dim)
        qh, kh, vh = (pool_fn(t[..., sl]) for t in (q, k, v))
        weights = (qh @ kh.transpose(1, 2) / attn.head_dim**0.5).softmax(dim=-1)
        heads.append(weights @ vh)
    return attn.proj(torch.cat(heads, dim=-1))


def test_mhpa_without_pooling_is_multi_head_attention():
    grid = Grid(t=2, h=4, w=4, prefix=1)
    attn = PoolingAttention(16, 2, "max").eval()
    assert attn.pool_q is attn.pool_k is attn.pool_v is None
    x = tokens(grid, c=16)
    y, new = attn(x, grid)
    assert new == grid
    torch.testing.assert_close(y, manual_mhpa(attn, x, grid, lambda t: t), rtol=1e-5, atol=1e-5)


def test_mhpa_pools_q_k_v_before_the_product():
    grid = Grid(t=2, h=8, w=8, prefix=1)
    attn = PoolingAttention(16, 2, "max", stride_q=(1, 2, 2), stride_kv=(2, 4, 4)).eval()
    x = tokens(grid, c=16)
    y, new = attn(x, grid)
    assert new == Grid(t=2, h=4, w=4, prefix=1) and y.shape == (2, 1 + 32, 16)

    def pool(t, stride, kernel):
        body = rearrange(t[:, 1:], "b (t h w) c -> b c t h w", t=2, h=8, w=8)
        body = F.max_pool3d(body, kernel, stride, tuple((k - 1) // 2 for k in kernel))
        return torch.cat([t[:, :1], rearrange(body, "b c t h w -> b (t h w) c")], dim=1)

    calls = iter([((1, 2, 2), (1, 3, 3)), ((2, 4, 4), (3, 5, 5)), ((2, 4, 4), (3, 5, 5))] * 2)
    ref = manual_mhpa(attn, x, grid, lambda t: pool(t, *next(calls)))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_mhpa_goes_through_the_one_attention_call_site(monkeypatch):
    model = create_model("mvit_tiny").eval()
    x = clip()
    fused = model(x)

    def forbidden(*_, **__):
        raise AssertionError("SDPA called although fused attention is off")

    monkeypatch.setattr(attention_mod.F, "scaled_dot_product_attention", forbidden)
    with fused_attention(False, model):
        manual = model(x)
    torch.testing.assert_close(fused, manual, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- the multiscale model (tiny config)

@pytest.mark.parametrize("mode", MODES)
def test_forward_backward_every_parameter_learns(mode):
    model = create_model("mvit_tiny", pool_mode=mode, num_classes=7)
    y = model(clip())
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    y.square().sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"


def test_pooled_residual_and_normalised_skip():
    """With the attention and MLP outputs zeroed a block is its skip path: P(X; Θ_Q) (max pooling) when the
    query is pooled, then Linear(LN(·)) when the channels grow (Fig. A.5a)."""
    model = create_model("mvit_tiny").eval()
    block = model.blocks[1]  # first block of stage 2: Q pooled; last of stage 2 is blocks[2]
    assert block.pool_skip is not None and block.proj is None
    for lin in (block.attn.proj, block.mlp.fc2):
        torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
    grid = Grid(t=2, h=8, w=8, prefix=1)
    x = tokens(grid, c=32)
    y, new = block(x, grid)
    grid_x = rearrange(x[:, 1:], "b (t h w) c -> b c t h w", t=2, h=8, w=8)
    body = F.max_pool3d(grid_x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    torch.testing.assert_close(y, torch.cat([x[:, :1], rearrange(body, "b c t h w -> b (t h w) c")], dim=1))
    assert new == Grid(t=2, h=4, w=4, prefix=1)

    last = model.blocks[2]
    for lin in (last.attn.proj, last.mlp.fc2):
        torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
    x = tokens(new, c=32)
    y, _ = last(x, new)
    assert y.shape[-1] == 64
    torch.testing.assert_close(y, last.proj(last.norm2(x)))


def test_features_and_no_weight_decay():
    """The generic API sweep (tests/test_models.py) covers heads, checkpointing and gradients for mvit_tiny."""
    model = create_model("mvit_tiny")
    feats = model.forward_features(clip())
    assert feats.shape == (2, 1 + 2 * 2 * 2, 64)  # CLS + T/2 × H/16 × W/16 tokens of the last stage
    assert model.no_weight_decay() == {"cls_token", "pos_embed.space", "pos_embed.time"}


@pytest.mark.parametrize("pos_embed", ["none", "space", "joint", "separable"])
@pytest.mark.parametrize("t, s", [(8, 32), (4, 64), (2, 48)])
def test_other_clip_sizes(pos_embed, t, s):
    model = create_model("mvit_tiny", pos_embed=pos_embed).eval()
    y = model(clip(t=t, s=s))
    assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_image_mode_and_temporal_pooling():
    image = create_model("mvit_tiny", num_frames=1, cube_kernel=(1, 7, 7), cube_stride_t=1, pos_embed="space")
    assert image(clip(t=1)).shape == (2, 10)
    temporal = create_model("mvit_tiny", num_frames=8, kv_stride=(2, 4, 4), q_stride=(2, 2, 2))
    grids = []
    temporal.blocks[-1].register_forward_hook(lambda m, i, o: grids.append(o[1]))
    temporal(clip(t=8))
    assert grids == [Grid(t=1, h=2, w=2, prefix=1)]  # 4 → 2 → 1 frames after two Q poolings of 2×2×2


def test_bad_input_is_a_clear_error():
    model = create_model("mvit_tiny")
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.randn(2, 4, 4, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="not divisible by the cube stride"):
        model(clip(t=5))
    with pytest.raises(ValueError, match="not divisible by the cube stride"):
        model(clip(s=34))
    with pytest.raises(ValueError, match="pool_mode"):
        MViTConfig(pool_mode="median")
    with pytest.raises(ValueError, match="pos_embed"):
        MViTConfig(pos_embed="learned")
    with pytest.raises(ValueError, match="disagrees"):
        MViTConfig(depth=12)
    with pytest.raises(ValueError, match="num_frames=15"):
        MViTConfig(num_frames=15)
    with pytest.raises(ValueError, match=r"stage 1: K/V pooling: .*too small for pooling kernel 1×2×2"):
        MViTConfig(img_size=16, patch_size=16, cube_kernel=(3, 17, 17), pool_kernel=(1, 2, 2), kv_stride=(1, 2, 2))


@pytest.mark.parametrize("size", [112, 144, 200])
def test_grids_the_strides_do_not_divide_are_floored(size):
    """MViT-B at 112² (28² tokens), 144² (36²) or 200² (50²): the 1×8×8 K/V stride and the stage-4 halving do
    not divide the grid; every pooling floors it, as PySlowFast's and torchvision's Conv3d / MaxPool3d do."""
    with torch.device("meta"):
        model = create_model("mvit_b_16x4", img_size=size)
        x = torch.empty(1, 3, 16, size, size)
        grids = []
        for block in model.blocks:
            block.register_forward_hook(lambda m, i, o: grids.append(o[1]))
        assert model(x).shape == (1, 400)
    n = size // 4
    for block, grid in zip(model.blocks, grids):
        q = block.attn.pool_q
        if q is not None:  # the query pool (3×3×3) and the residual's max pool (1×3×3) floor alike
            before = Grid(t=8, h=n, w=n)
            n = (n + 2 * q.padding[1] - q.kernel[1]) // q.stride[1] + 1
            assert block.pool_skip.out_grid(before) == q.out_grid(before)
        assert (grid.t, grid.h, grid.w) == (8, n, n)
    kv = model.blocks[0].attn.pool_k  # stage 1: kernel 3, stride 8, padding 1
    assert kv.out_grid(Grid(t=8, h=size // 4, w=size // 4)).h == (size // 4 + 2 - 3) // 8 + 1
    assert [g.h for g in grids][-1] == {112: 4, 144: 5, 200: 7}[size]



# ---------------------------------------------------------------- frame shuffle (Table 9)

def test_shuffle_frames_permutes_time_per_clip():
    x = torch.arange(4 * 6, dtype=torch.float32).reshape(4, 1, 6, 1, 1).expand(4, 3, 6, 2, 2).contiguous()
    y = shuffle_frames(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    perms = []
    for b in range(4):
        order = y[b, 0, :, 0, 0] - 6 * b
        assert sorted(order.tolist()) == list(range(6))  # a permutation of the clip's own frames
        torch.testing.assert_close(y[b], x[b][:, order.long()])  # whole frames move, all channels alike
        perms.append(tuple(order.tolist()))
    assert len(set(perms)) > 1  # every clip draws its own permutation
    torch.testing.assert_close(shuffle_frames(x, torch.Generator().manual_seed(0)), y)  # reproducible
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        shuffle_frames(torch.randn(2, 3, 4, 4))


def test_shuffle_separates_order_aware_models_from_bags_of_frames():
    """Table 9's probe: a frame-wise ViT (bag of frames) is blind to the shuffle, MViT's cube and pooling are not."""
    x, g = clip(t=4), torch.Generator().manual_seed(1)
    shuffled = shuffle_frames(x, g)
    framewise, mvit = create_model("vit_tiny_framewise").eval(), create_model("mvit_tiny").eval()
    torch.testing.assert_close(framewise(shuffled), framewise(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mvit(shuffled), mvit(x), rtol=1e-3, atol=1e-4)
