"""MAC counting: the counter against analytic counts, and the published parameter / FLOP tables.

Full-size models are built and run on the meta device only (no weights, no compute).
"""
from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from videoformer.analysis import TOP_LEVEL, count_macs, count_model
from videoformer.layers import AttentionModule, AxisAttention, Grid, Grouping, fused_attention
from videoformer.models import create_model


class LinearAttend(AttentionModule):
    """One linear layer making Q, K, V, then one attention call: ``N·d·3d + N²·d (QKᵀ) + N²·d (AV)`` MACs."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.qkv = heads, nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        return self.attend(q, k, v)


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("fused", [True, False])
def test_counter_matches_analytic_linear_and_attention(device: str, fused: bool) -> None:
    n, d = 10, 24
    model = LinearAttend(d, heads=3).to(device)
    with fused_attention(fused, model):
        report = count_macs(model, (n, d))
    assert report.macs == n * d * 3 * d + 2 * n * n * d
    assert report.params == d * 3 * d + 3 * d


def test_counter_on_axis_attention_with_prefix_and_groups() -> None:
    """Spatial attention over ``t`` frames, the CLS token replicated into every frame's sequence."""
    d, heads, grid = 32, 4, Grid(t=3, h=4, w=5, prefix=1)

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = AxisAttention(d, heads, [Grouping(("h", "w"))])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, grid)

    tokens, seq = grid.prefix + grid.numel, grid.prefix + grid.h * grid.w
    expected = tokens * d * 3 * d + tokens * d * d + grid.t * 2 * seq * seq * d
    for fused in (True, False):
        with torch.device("meta"):
            wrap = Wrap()
        with fused_attention(fused, wrap):
            assert count_macs(wrap, (tokens, d)).macs == expected


def test_grouped_convolution() -> None:
    conv = nn.Conv3d(8, 8, kernel_size=3, stride=2, padding=1, groups=8)  # depthwise, as in MViT pooling
    report = count_macs(conv, (8, 4, 8, 8))
    assert report.macs == (2 * 4 * 4) * 8 * 27


def test_vivit_model1_equals_closed_form() -> None:
    """ViViT-B/16x2 model 1: tubelet embedding, 12 × (12·N·D² + 2·N²·D) with N = 1 + 16·14·14, head."""
    report = count_model("vivit_b16x2_joint", num_frames=32, num_classes=400)
    D, tokens = 768, 16 * 14 * 14
    n = tokens + 1
    assert report.macs == tokens * (3 * 2 * 16 * 16) * D + 12 * (12 * n * D * D + 2 * n * n * D) + D * 400
    assert report.ops["bmm"] == 12 * 2 * n * n * D  # attention products are counted


def test_agrees_with_torch_flop_counter_on_meta() -> None:
    """On meta tensors SDPA decomposes into bmm, which torch's counter sees too: FLOPs = 2 × MACs."""
    with torch.device("meta"):
        model = create_model("vivit_b16x2_fdp", num_frames=32).eval()
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        model(torch.empty(1, 3, 32, 224, 224, device="meta"))
    assert flops.get_total_flops() == 2 * count_macs(model, (3, 32, 224, 224)).macs


@pytest.mark.parametrize("name", ["vivit_tiny_fdp", "vivit_tiny_fe", "timesformer_tiny_divided",
                                  "timesformer_tiny_local_global"])
def test_fused_manual_and_meta_counts_agree(name: str) -> None:
    model = create_model(name).train()
    shape = (3, 4, 32, 32)
    with fused_attention(True, model):
        fused = count_macs(model, shape)
    with fused_attention(False, model):
        manual = count_macs(model, shape)
    with torch.device("meta"):
        meta = count_macs(create_model(name), shape)
    assert fused.units == manual.units == meta.units
    assert fused.macs == manual.macs == meta.macs > 0
    assert model.training and not model.blocks[0]._forward_hooks and not model.blocks[0]._forward_pre_hooks


def test_breakdown_adds_up() -> None:
    report = count_model("vivit_b16x2_fe", num_frames=32)
    units = {u.name: u for u in report.units}
    assert sum(u.macs for u in report.units) == report.macs
    assert sum(u.params for u in report.units) == report.params
    assert len({units[f"blocks.{i}"].macs for i in range(12)}) == 1
    assert units["temporal_blocks.3"].macs < units["blocks.0"].macs / 100  # 17 temporal tokens vs 197
    assert units[TOP_LEVEL].params == 2 * 768  # spatial and temporal CLS tokens
    assert units["head"].params == 768 * 400 + 400
    assert report.summary() == {"model": "vivit_b16x2_fe", "params": report.params,
                                "gmacs": round(report.gmacs, 4), "input": [3, 32, 224, 224]}


def test_keyword_inputs() -> None:
    class TwoStream(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rgb, self.audio = nn.Linear(6, 4), nn.Linear(5, 4)

        def forward(self, rgb: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
            return self.rgb(rgb).sum(1) + self.audio(audio).sum(1)

    report = count_macs(TwoStream(), {"rgb": (3, 6), "audio": (7, 5)})
    assert report.macs == 3 * 6 * 4 + 7 * 5 * 4
    assert [u.macs for u in report.units] == [72, 140]


def within(value: float, target: float, rel: float) -> bool:
    return abs(value - target) <= rel * target


# ViViT Table 2: ViViT-B/16x2, 32×224², 400 classes -> (params ×10⁶, FLOPs ×10⁹ = GMACs).
VIVIT_TABLE2 = {
    "vivit_b16x2_joint": (88.9, 455.2),
    "vivit_b16x2_fe": (115.1, 284.4),
    "vivit_b16x2_fsa": (117.3, 372.3),
    "vivit_b16x2_fdp": (88.9, 277.1),
    "vivit_b16x2_fe_avgpool": (86.7, 283.9),
}


@pytest.mark.parametrize("name", VIVIT_TABLE2)
def test_vivit_table2(name: str) -> None:
    params, gmacs = VIVIT_TABLE2[name]
    report = count_model(name, num_frames=32, img_size=224, num_classes=400)
    assert within(report.params / 1e6, params, 0.005), report.params
    assert within(report.gmacs, gmacs, 0.02), report.gmacs


# TimeSformer Table 1: ViT-B/16, 8×224², 400 classes -> params ×10⁶.
TIMESFORMER_TABLE1 = {"space": 85.9, "joint": 85.9, "divided": 121.4, "local_global": 121.4, "axial": 156.8}


@pytest.mark.parametrize("scheme", TIMESFORMER_TABLE1)
def test_timesformer_table1_params(scheme: str) -> None:
    with torch.device("meta"):
        model = create_model(f"timesformer_b16_{scheme}", num_frames=8, img_size=224, num_classes=400)
    assert within(sum(p.numel() for p in model.parameters()) / 1e6, TIMESFORMER_TABLE1[scheme], 0.005)


def test_mvit_table3_vit_b() -> None:
    """MViT Table 3(a): ViT-B (joint attention over 8×14×14 frame patches + CLS), 179.6G FLOPs, 87.2M."""
    report = count_model("vivit_b16x2_joint", num_frames=8, tubelet_t=1, num_classes=400)
    assert within(report.params / 1e6, 87.2, 0.005) and within(report.gmacs, 179.6, 0.02)
