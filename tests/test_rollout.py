"""Attention rollout: against a dense Â_L…Â_1 product built token by token, mass bookkeeping, PNGs via the CLI."""
import math

import pytest
import torch

from videoformer.analysis.rollout import RolloutError, attention_rollout
from videoformer.cli import main
from videoformer.layers import attend_over, fused_attention
from videoformer.models import TimeSformer, create_model, model_config
from videoformer.models.mmvit import VARIANTS


def mm_inputs(b=1, t=4, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"iframe": torch.randn(b, t, 3, s, s, generator=g), "mv": torch.randn(b, t, 2, s, s, generator=g),
            "residual": torch.randn(b, t, 3, s, s, generator=g), "audio": torch.randn(b, t, 128, generator=g)}


def sublayer_inputs(model, inputs):
    """(module, normalised input) of every attention sublayer, in forward order."""
    seen = []
    hooks = [a.register_forward_pre_hook(lambda mod, args: seen.append((mod, args[0][0])))
             for blk in model.blocks for a in blk.attns]
    with torch.no_grad():
        model.eval()(inputs)
    for h in hooks:
        h.remove()
    return seen


def dense(module, x, seqs, replicate, others_only=False):
    """The sublayer's token-mixing matrix (heads averaged): each sequence of token indices attends within
    itself (plus token 0, the CLS, when replicated, whose row averages over the sequences)."""
    L, heads = x.shape[0], module.num_heads
    q, k, _ = module.qkv(x).view(L, 3, heads, -1).unbind(1)
    D = torch.zeros(L, L)
    if not replicate:
        D[0, 0] = 1.0  # CLS excluded: only its residual
    for seq in seqs:
        idx = torch.tensor(([0] if replicate else []) + seq)
        logits = torch.einsum("ihd,jhd->hij", q[idx], k[idx]) / math.sqrt(q.shape[-1])
        if others_only:
            logits = logits.masked_fill(torch.eye(len(idx), dtype=torch.bool), float("-inf"))
        A = logits.softmax(-1).mean(0)
        rows = slice(1, None) if replicate else slice(None)
        D[idx[rows, None], idx[None, :]] += A[rows]
        if replicate:
            D[0, idx] += A[0] / len(seqs)
    return D


def roll(mats):
    R = torch.eye(mats[0].shape[0])
    for D in mats:
        R = (0.5 * D + 0.5 * torch.eye(D.shape[0])) @ R
    return R[0, 1:]


def token(m, t, n, T=4, N=16):
    return 1 + m * T * N + t * N + n


def test_timesformer_divided_matches_dense_rollout():
    torch.manual_seed(0)
    model = create_model("timesformer_tiny_divided")
    clip = torch.randn(1, 3, 4, 32, 32)
    time_seqs = [[token(0, t, n) for t in range(4)] for n in range(16)]
    space_seqs = [[token(0, t, n) for n in range(16)] for t in range(4)]
    mats = [dense(mod, x, time_seqs if i % 2 == 0 else space_seqs, replicate=i % 2 == 1)
            for i, (mod, x) in enumerate(sublayer_inputs(model, clip))]
    ours = attention_rollout(model, clip)["video"]
    assert ours.shape == (1, 4, 4, 4)
    torch.testing.assert_close(ours.flatten(), roll(mats))


class TimeWidthThenHeight(TimeSformer):
    """A factorisation no paper has, in a few lines of plan: attend over (t, w) -- an added sublayer, CLS left
    alone, extra fc -- then over h with the CLS token replicated."""

    @staticmethod
    def sublayer_plan(cfg):
        tw = attend_over("t", "w", prefix="exclude", extra_proj=True, init="added")
        return [(tw, attend_over("h"))] * cfg.depth


def test_a_new_factorisation_is_a_plan_builds_runs_and_rolls_out():
    torch.manual_seed(0)
    model = TimeWidthThenHeight(model_config("timesformer_tiny_divided"))
    divided = create_model("timesformer_tiny_divided")
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in divided.state_dict().items()}
    clip = torch.randn(2, 3, 4, 32, 32)
    y = model(clip)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        fused = model(clip)
        with fused_attention(False, model):
            torch.testing.assert_close(model(clip), fused, rtol=1e-5, atol=1e-5)
    # image-ViT initialisation reads the init roles: the (t, w) sublayer's fc starts at zero
    from videoformer.weights import init_from_image

    init_from_image(model, create_model("vit_tiny_framewise").state_dict())
    assert model.blocks[0].attns[0].fc.weight.abs().sum() == 0
    # rollout against the dense token-by-token product (4 frames of 4×4 patches, n = h * 4 + w)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    one = clip[:1]
    tw_seqs = [[token(0, t, h * 4 + w) for t in range(4) for w in range(4)] for h in range(4)]
    h_seqs = [[token(0, t, h * 4 + w) for h in range(4)] for t in range(4) for w in range(4)]
    mats = [dense(mod, x, tw_seqs if i % 2 == 0 else h_seqs, replicate=i % 2 == 1)
            for i, (mod, x) in enumerate(sublayer_inputs(model, one))]
    ours = attention_rollout(model, one)["video"]
    assert ours.shape == (1, 4, 4, 4)
    torch.testing.assert_close(ours.flatten(), roll(mats))


@pytest.mark.parametrize("variant", ["coattn", "merged", "factorized"])
def test_mmvit_matches_dense_rollout(variant):
    torch.manual_seed(0)
    model = create_model(f"mmvit_tiny_{variant}")
    x = mm_inputs()
    seqs = {
        "T": [[token(m, t, n) for t in range(4)] for m in range(4) for n in range(16)],
        "M": [[token(m, t, n) for m in range(4)] for t in range(4) for n in range(16)],
        "S": [[token(m, t, n) for n in range(16)] for m in range(4) for t in range(4)],
        "IIT": [[token(m, t, n) for m in range(4) for t in range(4)] for n in range(16)],
        "IIS": [[token(m, t, n) for m in range(4) for n in range(16)] for t in range(4)],
    }
    kinds = ["IIT", "IIS"] if variant == "factorized" else ["T", "M", "S"]
    mats = [dense(mod, inp, seqs[kinds[i % len(kinds)]], replicate=kinds[i % len(kinds)].endswith("S"),
                  others_only=variant == "coattn" and kinds[i % len(kinds)] == "M")
            for i, (mod, inp) in enumerate(sublayer_inputs(model, x))]
    maps = attention_rollout(model, x)
    assert set(maps) == {"iframe", "mv", "residual", "audio"} and maps["audio"].shape == (1, 4)
    flat = torch.cat([maps[m].reshape(1, 4, 16) for m in ("iframe", "mv", "residual")], dim=0).flatten()
    ref = roll(mats)
    torch.testing.assert_close(flat, ref[: 3 * 64])
    torch.testing.assert_close(maps["audio"][0], ref[3 * 64 :].view(4, 16).sum(-1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_mmvit_variant_has_maps(variant):
    model = create_model(f"mmvit_tiny_{variant}")
    maps = attention_rollout(model, mm_inputs(b=2))
    total = sum(m.flatten(1).sum(1) for m in maps.values())
    assert all((m >= 0).all() for m in maps.values())
    assert ((total > 0.1) & (total <= 1 + 1e-5)).all()  # the rest stays on the CLS token


@pytest.mark.parametrize("name, frames", [("vivit_tiny_fsa", 2), ("vivit_tiny_fdp", 2), ("vivit_tiny_fe", 2),
                                          ("vivit_tiny_joint", 2), ("timesformer_tiny_space", 4),
                                          ("timesformer_tiny_local_global", 4), ("timesformer_tiny_axial", 4)])
def test_rgb_models(name, frames):
    model = create_model(name)
    maps = attention_rollout(model, torch.randn(2, 3, 4, 32, 32))
    assert maps["video"].shape == (2, frames, 4, 4) and (maps["video"] >= 0).all()
    if name in ("vivit_tiny_fsa", "vivit_tiny_fdp"):  # average pooling, no CLS: all the mass is on the input
        torch.testing.assert_close(maps["video"].flatten(1).sum(1), torch.ones(2))


def test_unsupported_models_are_a_clear_error():
    with pytest.raises(RolloutError, match="not grid attention"):
        attention_rollout(create_model("mvit_tiny"), torch.randn(1, 3, 4, 32, 32))


def test_cli_writes_png_overlays(tmp_path, capsys):
    from safetensors.torch import save_file

    from videoformer.data.synthetic import moving_square_frames, tone, write_video

    video = write_video(tmp_path / "clip.mp4", moving_square_frames(t=24, h=48, w=64), fps=24, codec="mpeg4",
                        gop=12, audio=tone(1.0))
    torch.manual_seed(0)
    weights = tmp_path / "mmvit.safetensors"
    save_file(create_model("mmvit_tiny_merged").state_dict(), str(weights))
    out = tmp_path / "png"
    assert main(["rollout", "mmvit_tiny_merged", video, "--out", str(out), "--weights", str(weights)]) == 0
    assert main(["rollout", "timesformer_tiny_divided", video, "--out", str(out)]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["mmvit_tiny_merged_clip_0.png", "timesformer_tiny_divided_clip_0.png"]
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert str(pngs[0]) in capsys.readouterr().out
    assert main(["rollout", "mvit_tiny", video, "--out", str(out)]) == 2
    assert main(["rollout", "mmvit_tiny_merged", video, "--weights", str(tmp_path / "missing.pt")]) == 2
