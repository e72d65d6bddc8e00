"""The attention core: grid groupings, prefix handling, head-split attention, positional resampling."""
import pytest
import torch
import torch.nn.functional as F

from videoformer.layers import AxisAttention, Grid, Grouping, JointPosEmbed, SeparablePosEmbed, drop_path_rates
from videoformer.layers.drop import DropPath


def indexed_grid(grid: Grid) -> torch.Tensor:
    """Tokens whose 4 channels are their own (m, t, h, w) coordinates."""
    m, t, h, w = torch.meshgrid(*(torch.arange(n) for n in (grid.m, grid.t, grid.h, grid.w)), indexing="ij")
    return torch.stack([m, t, h, w], dim=-1).reshape(1, -1, 4).float()


@pytest.mark.parametrize(
    "grouping, same",
    [
        (Grouping(("h", "w")), lambda a, b: (a[:2] == b[:2]).all()),  # same m, t
        (Grouping(("t",)), lambda a, b: (a[[0, 2, 3]] == b[[0, 2, 3]]).all()),
        (Grouping(("m", "h", "w")), lambda a, b: a[1] == b[1]),
        (Grouping(("t", "h", "w"), window={"h": 2, "w": 3}),
         lambda a, b: a[0] == b[0] and a[2] // 2 == b[2] // 2 and a[3] // 3 == b[3] // 3),
        (Grouping(("t", "h", "w"), dilation={"t": 2, "h": 2}),
         lambda a, b: a[0] == b[0] and a[1] % 2 == b[1] % 2 and a[2] % 2 == b[2] % 2),
    ],
)
def test_grouping_partitions_the_grid_as_specified(grouping, same):
    grid = Grid(t=4, h=4, w=6, m=2)
    x = indexed_grid(grid)
    seqs = grouping.group(x, grid)
    assert seqs.shape[0] == grouping.num_groups(grid)
    for seq in seqs:  # every sequence holds exactly the tokens that belong together
        assert all(same(seq[0], tok) for tok in seq)
    assert sum(len(s) for s in seqs) == grid.numel
    torch.testing.assert_close(grouping.ungroup(seqs, grid), x)


def test_grouping_rejects_bad_specs():
    with pytest.raises(ValueError, match="subset"):
        Grouping(("x",))
    with pytest.raises(ValueError, match="not attended"):
        Grouping(("t",), window={"h": 2})
    with pytest.raises(ValueError, match="not divisible"):
        Grouping(("h",), window={"h": 3}).group(torch.zeros(1, 4, 1), Grid(t=1, h=4, w=1))


def reference_mha(attn: AxisAttention, x: torch.Tensor) -> torch.Tensor:
    """Plain multi-head self-attention over a whole sequence with the module's weights."""
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    split = lambda z: z.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)
    out = F.softmax(split(q) @ split(k).transpose(-1, -2) / attn.head_dim**0.5, -1) @ split(v)
    return attn.proj(out.transpose(1, 2).flatten(2))


def test_joint_attention_with_prefix_is_plain_mha():
    grid = Grid(t=2, h=3, w=3, prefix=1)
    attn = AxisAttention(16, 4, [Grouping(("t", "h", "w"))])
    x = torch.randn(2, 1 + 18, 16)
    torch.testing.assert_close(attn(x, grid), reference_mha(attn, x))


def test_spatial_attention_replicates_cls_per_frame_and_averages():
    grid = Grid(t=3, h=2, w=2, prefix=1)
    attn = AxisAttention(16, 2, [Grouping(("h", "w"))])
    x = torch.randn(1, 1 + 12, 16)
    out = attn(x, grid)
    frames = [torch.cat([x[:, :1], x[:, 1 + 4 * t : 5 + 4 * t]], 1) for t in range(3)]
    ref = [reference_mha(attn, f) for f in frames]
    torch.testing.assert_close(out[:, 1:], torch.cat([r[:, 1:] for r in ref], 1))
    torch.testing.assert_close(out[:, :1], torch.stack([r[:, :1] for r in ref]).mean(0))


def test_excluded_prefix_is_untouched_and_extra_projection_applies():
    grid = Grid(t=3, h=2, w=2, prefix=1)
    attn = AxisAttention(16, 2, [Grouping(("t",))], prefix="exclude", extra_proj=True)
    x = torch.randn(1, 1 + 12, 16)
    out = attn(x, grid)
    assert out[:, 0].abs().max() == 0
    loc = x[:, 1:].reshape(1, 3, 4, 16)[:, :, 1]  # the 3 tokens at spatial position 1
    torch.testing.assert_close(out[:, 1:].reshape(1, 3, 4, 16)[:, :, 1], attn.fc(reference_mha(attn, loc)))


def test_factorised_dot_product_heads_split_space_and_time():
    """ViViT model 4 (Eq. 7 with K_s, V_s / K_t, V_t): half the heads over space, half over time."""
    grid = Grid(t=2, h=2, w=2)
    both = AxisAttention(16, 4, [Grouping(("h", "w")), Grouping(("t",))])
    x = torch.randn(2, 8, 16)
    out = both(x, grid)
    space = AxisAttention(16, 4, [Grouping(("h", "w"))])
    time = AxisAttention(16, 4, [Grouping(("t",))])
    for part in (space, time):
        part.load_state_dict(both.state_dict())
        torch.nn.init.eye_(part.proj.weight), torch.nn.init.zeros_(part.proj.bias)
    heads = torch.cat([space(x, grid)[..., :8], time(x, grid)[..., 8:]], dim=-1)
    torch.testing.assert_close(out, both.proj(heads))


def test_joint_pos_embed_resamples_only_when_needed():
    pe = JointPosEmbed(8, Grid(t=2, h=4, w=4, prefix=1))
    x = torch.zeros(1, 1 + 32, 8)
    torch.testing.assert_close(pe(x, Grid(t=2, h=4, w=4, prefix=1)), pe.pos)
    y = pe(torch.zeros(1, 1 + 4 * 8 * 8, 8), Grid(t=4, h=8, w=8, prefix=1))
    assert y.shape == (1, 1 + 256, 8)
    torch.testing.assert_close(y[:, :1], pe.pos[:, :1])  # prefix embedding is never resampled


def test_separable_pos_embed_is_space_plus_time():
    pe = SeparablePosEmbed(8, Grid(t=3, h=2, w=2, prefix=1))
    y = pe(torch.zeros(1, 13, 8), Grid(t=3, h=2, w=2, prefix=1))
    torch.testing.assert_close(y[:, 1 + 4 * 2 + 3], pe.space[:, 1 + 3] + pe.time[:, 2])
    torch.testing.assert_close(y[:, 0], pe.space[:, 0])


def test_drop_path_rates_and_behaviour():
    assert drop_path_rates(0.3, 3) == pytest.approx([0.1, 0.2, 0.3])
    dp = DropPath(0.5).train()
    y = dp(torch.ones(4000, 3))
    kept = (y[:, 0] > 0).float().mean()
    assert 0.45 < kept < 0.55 and torch.allclose(y[y > 0], torch.tensor(2.0))
    assert torch.equal(dp.eval()(torch.ones(5, 3)), torch.ones(5, 3))


def test_positional_init_scales_are_config_values():
    """The papers' init (ViT's 0.02, the official TimeSformer's zero time embedding) is one setting away; the
    default scales weights and embeddings with the width (0.02 at ViT-B's d = 768) and never zeroes time."""
    from videoformer.models import create_model

    default = create_model("timesformer_tiny_divided", init_std=0.02, pos_embed_std=0.02, time_embed_std=0.0)
    assert default.pos_embed.time.abs().max() == 0 and 0.01 < default.pos_embed.space.std() < 0.03
    assert 0.01 < default.blocks[0].mlp.fc1.weight.std() < 0.03
    scaled = create_model("timesformer_tiny_divided")  # d = 64: 0.02 * sqrt(768 / 64) = 0.069
    assert 0.055 < scaled.blocks[0].mlp.fc1.weight.std() < 0.08
    assert 0.4 < scaled.pos_embed.space.std() < 0.6 and 0.3 < scaled.pos_embed.time.std() < 0.7  # EMBED_STD
    with torch.device("meta"):
        assert create_model("timesformer_b16_divided").cfg.weight_std == 0.02  # ViT-B: as in the paper
    big = create_model("timesformer_tiny_divided", pos_embed_std=0.5, time_embed_std=0.5)
    assert 0.3 < big.pos_embed.space.std() < 0.6 and 0.3 < big.pos_embed.time.std() < 0.6
    assert 0.3 < create_model("vivit_tiny_joint", pos_embed_std=0.5).pos_embed.pos.std() < 0.6


def test_grouping_is_hashable_and_its_patterns_are_cached():
    a = Grouping(("t", "h", "w"), window={"h": 2, "w": 3})
    b = Grouping(["t", "h", "w"], window={"w": 3, "h": 2})
    assert a == b and hash(a) == hash(b) and len({a, b, Grouping(("t",))}) == 2
    grid = Grid(t=2, h=4, w=6)
    assert a.patterns(grid) is b.patterns(grid)  # computed once per (grouping, grid)


def test_fused_and_recording_are_per_module_settings():
    import videoformer.layers.attention as attention_mod
    from videoformer.layers import fused_attention, record_attention

    grid = Grid(t=2, h=2, w=2, prefix=1)
    one, other = AxisAttention(16, 4, [Grouping(("h", "w"))]), AxisAttention(16, 4, [Grouping(("t",))])
    x = torch.randn(1, 1 + grid.numel, 16)
    weights, seen = [], []
    with fused_attention(False, one), record_attention(weights.append, other):
        assert not one.fused and other.fused and other.recorder is not None and one.recorder is None
        one(x, grid), other(x, grid)
    assert one.fused and "fused" not in one.__dict__ and "recorder" not in other.__dict__  # restored
    assert [w.shape for w in weights] == [(4, 4, 3, 3)]  # only `other` recorded: B·h·w sequences, CLS + t = 2
    with pytest.raises(TypeError, match="model"):
        fused_attention(False).__enter__()
    original = attention_mod.F.scaled_dot_product_attention
    attention_mod.F.scaled_dot_product_attention = lambda *a, **k: seen.append(1) or original(*a, **k)
    try:
        with fused_attention(False, one):
            one(x, grid), other(x, grid)
    finally:
        attention_mod.F.scaled_dot_product_attention = original
    assert seen == [1]  # the fused kernel ran for `other` only
