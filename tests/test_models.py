"""Registry sweep over the tiny configs: shapes, finiteness, gradients, checkpointing, other clip sizes."""
import pytest
import torch

import videoformer
from videoformer.layers import fused_attention
from videoformer.models import UnknownModelError, create_model, list_models

TINY = [n for n in list_models("*tiny*") if not n.startswith("mmvit_")]  # multi-modal: tests/test_mmvit.py


def clip(b=2, t=4, s=32):
    return torch.randn(b, 3, t, s, s)


def test_registry_has_the_issue_names():
    required = ["vit_b16_framewise", "vivit_b16x2_joint", "vivit_b16x2_fe", "vivit_b16x2_fsa", "vivit_b16x2_fdp",
                "vivit_l16x2_fe", "vivit_h14x2_joint", "timesformer_b16_space", "timesformer_b16_joint",
                "timesformer_b16_divided", "timesformer_b16_local_global", "timesformer_b16_axial"]
    assert set(required) <= set(videoformer.list_models())
    assert len(TINY) >= 10


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownModelError, match="timesformer_b16_divided"):
        create_model("timesformer_b16_divded")


def test_unknown_override_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown config field"):
        create_model("vivit_tiny_joint", depht=3)


@pytest.mark.parametrize("name", TINY)
def test_forward_backward(name):
    model = create_model(name, num_classes=7)
    y = model(clip())
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    y.square().sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"


@pytest.mark.parametrize("name", TINY)
def test_api(name):
    model = create_model(name).eval()
    x = clip()
    feats = model.forward_features(x)
    pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    nwd = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert nwd and nwd <= set(params) and all("pos" in n or "cls" in n for n in nwd)


@pytest.mark.parametrize("name", TINY)
def test_grad_checkpointing_is_exact(name):
    model = create_model(name)
    x = clip()
    y0 = model(x)
    y0.sum().backward()
    g0 = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing()
    y1 = model(x)
    y1.sum().backward()
    torch.testing.assert_close(y1, y0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, g0[n], msg=n)


@pytest.mark.parametrize("name", TINY)
def test_fused_and_manual_attention_agree(name):
    model = create_model(name).eval()
    x = clip()
    with torch.no_grad():
        fused = model(x)
        with fused_attention(False, model):
            manual = model(x)
    torch.testing.assert_close(fused, manual, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_other_clip_sizes_resample_positions(name):
    model = create_model(name).eval()  # built for 4 × 32²
    with torch.no_grad():
        y = model(clip(b=1, t=8, s=48))
    assert y.shape == (1, 10) and torch.isfinite(y).all()


@pytest.mark.parametrize(
    "name, x, match",
    [
        ("vivit_tiny_joint", torch.randn(1, 3, 32, 32), "expected a clip"),
        ("vivit_tiny_joint", torch.randn(1, 1, 4, 32, 32), "expected a clip"),
        ("vivit_tiny_joint", torch.randn(1, 3, 3, 32, 32), "not divisible by the tubelet"),
        ("timesformer_tiny_divided", torch.randn(1, 3, 4, 30, 32), "not divisible by the tubelet"),
    ],
)
def test_bad_input_names_the_constraint(name, x, match):
    with pytest.raises(ValueError, match=match):
        create_model(name)(x)


def test_bad_configs():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        create_model("vivit_tiny_joint", img_size=30)
    with pytest.raises(ValueError, match="model must be"):
        create_model("vivit_tiny_joint", model=5)
    with pytest.raises(ValueError, match="scheme"):
        create_model("timesformer_tiny_joint", scheme="diagonal")


def test_fe_average_pool_baseline_has_no_temporal_encoder():
    model = create_model("vivit_tiny_fe", temporal_depth=0)
    assert not hasattr(model, "temporal_blocks")
    assert model(clip()).shape == (2, 10)


def test_model3_orders_and_gap_pool_in_model2():
    for overrides in (dict(order="ts"),):
        assert create_model("vivit_tiny_fsa", **overrides)(clip()).shape == (2, 10)
    assert create_model("vivit_tiny_fe", spatial_pool="avg")(clip()).shape == (2, 10)


def test_uniform_frame_sampling_tokeniser():
    model = create_model("vivit_tiny_joint", tubelet_t=1)
    assert model.pos_embed.pos.shape[1] == 1 + 4 * 4 * 4
    assert model(clip()).shape == (2, 10)


def test_stochastic_depth_rates_increase_linearly():
    model = create_model("vivit_tiny_fsa", depth=4, drop_path_rate=0.4)
    rates = [b.drop_path.p for b in model.blocks]
    assert rates == pytest.approx([0.1, 0.2, 0.3, 0.4])
