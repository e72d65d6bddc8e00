"""Image-ViT initialisation of the video models (ViViT §3.4): readers of the three checkpoint formats, parity
with Hugging Face ViT, and the factorisation identities the initialisation rules guarantee."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from einops import rearrange
from safetensors.torch import load_file, save_file

import videoformer as vf
from videoformer.models import FramewiseViT, FramewiseViTConfig
from videoformer.weights.common import CheckpointError, CheckpointMismatchError
from videoformer.weights.image import read_image_vit
from videoformer.weights.inflate import init_from_image

transformers = pytest.importorskip("transformers")

D, DEPTH, HEADS, PATCH, IMG, CLASSES = 64, 2, 4, 8, 32, 10
TINY = dict(dim=D, depth=DEPTH, num_heads=HEADS, patch_size=PATCH, img_size=IMG, num_classes=CLASSES)


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Random non-trivial values everywhere (biases and LayerNorms too), so a mis-mapped key shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def hf_vit():
    cfg = transformers.ViTConfig(hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                 intermediate_size=4 * D, image_size=IMG, patch_size=PATCH, num_labels=CLASSES)
    model = transformers.ViTForImageClassification(cfg).eval()
    _perturb(model, 0)
    return model


@pytest.fixture(scope="module")
def files(hf_vit, tmp_path_factory):
    """The same weights written as a Hugging Face directory, timm .safetensors / .pth and a JAX .npz."""
    root = tmp_path_factory.mktemp("image_vit")
    hf_vit.save_pretrained(root / "hf")
    sd = {k.removeprefix("vit."): v for k, v in load_file(root / "hf" / "model.safetensors").items()}  # file layout
    layer = "encoder.layer.{}."

    timm = {"cls_token": sd["embeddings.cls_token"], "pos_embed": sd["embeddings.position_embeddings"],
            "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
            "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
            "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"],
            "head.weight": sd["classifier.weight"], "head.bias": sd["classifier.bias"]}
    jax = {"cls": sd["embeddings.cls_token"], "Transformer/posembed_input/pos_embedding":
           sd["embeddings.position_embeddings"],
           "embedding/kernel": sd["embeddings.patch_embeddings.projection.weight"].permute(2, 3, 1, 0),  # HWIO
           "embedding/bias": sd["embeddings.patch_embeddings.projection.bias"],
           "Transformer/encoder_norm/scale": sd["layernorm.weight"], "Transformer/encoder_norm/bias":
           sd["layernorm.bias"], "head/kernel": sd["classifier.weight"].T, "head/bias": sd["classifier.bias"]}
    for i in range(DEPTH):
        h, b, j = layer.format(i), f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        att = h + "attention.attention."
        for src, dst in (("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                         ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"),
                         ("attention.output.dense", "attn.proj")):
            for p in ("weight", "bias"):
                timm[f"{b}{dst}.{p}"] = sd[f"{h}{src}.{p}"]
        for p in ("weight", "bias"):
            timm[f"{b}attn.qkv.{p}"] = torch.cat([sd[f"{att}{n}.{p}"] for n in ("query", "key", "value")])
        for ln, name in (("layernorm_before", "LayerNorm_0"), ("layernorm_after", "LayerNorm_2")):
            jax[f"{j}{name}/scale"], jax[f"{j}{name}/bias"] = sd[f"{h}{ln}.weight"], sd[f"{h}{ln}.bias"]
        for n in ("query", "key", "value"):  # Flax DenseGeneral: kernel (D, heads, hd), bias (heads, hd)
            jax[f"{j}MultiHeadDotProductAttention_1/{n}/kernel"] = sd[f"{att}{n}.weight"].T.reshape(D, HEADS, -1)
            jax[f"{j}MultiHeadDotProductAttention_1/{n}/bias"] = sd[f"{att}{n}.bias"].reshape(HEADS, -1)
        out = sd[f"{h}attention.output.dense.weight"]
        jax[f"{j}MultiHeadDotProductAttention_1/out/kernel"] = out.T.reshape(HEADS, -1, D)
        jax[f"{j}MultiHeadDotProductAttention_1/out/bias"] = sd[f"{h}attention.output.dense.bias"]
        for k, src in enumerate(("intermediate.dense", "output.dense")):
            jax[f"{j}MlpBlock_3/Dense_{k}/kernel"] = sd[f"{h}{src}.weight"].T
            jax[f"{j}MlpBlock_3/Dense_{k}/bias"] = sd[f"{h}{src}.bias"]
    save_file({k: v.contiguous() for k, v in timm.items()}, root / "timm.safetensors")
    torch.save(timm, root / "timm.pth")
    np.savez(root / "vit.npz", **{k: v.numpy() for k, v in jax.items()})
    return {"hf": root / "hf", "safetensors": root / "timm.safetensors", "pth": root / "timm.pth",
            "npz": root / "vit.npz", "timm": timm, "jax": jax}


def _image_vit(class_token: bool, seed: int) -> FramewiseViT:
    model = FramewiseViT(FramewiseViTConfig(**TINY, num_frames=1, class_token=class_token)).eval()
    _perturb(model, seed)
    return model


def test_three_formats_give_one_canonical_state_dict(hf_vit, files):
    ref = read_image_vit(files["hf"])
    assert set(ref) == set(FramewiseViT(FramewiseViTConfig(**TINY)).state_dict())
    assert ref["patch_embed.proj.weight"].shape == (D, 3, 1, PATCH, PATCH)
    in_memory = hf_vit.state_dict()  # transformers >= 5 module names (layers.i.attention.q_proj ...)
    for fmt in ("safetensors", "pth", "npz", "in_memory"):
        other = read_image_vit(in_memory if fmt == "in_memory" else files[fmt])
        assert set(other) == set(ref), fmt
        for k in ref:
            torch.testing.assert_close(other[k], ref[k], rtol=0, atol=1e-6, msg=f"{fmt}: {k}")


def test_big_vision_npz_scanned_blocks_and_pre_logits(files, tmp_path):
    """big_vision naming (MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0, top-level pos_embedding),
    blocks stacked by ``scan`` under a ``params/`` prefix; a ``pre_logits`` layer drops the head behind it."""
    names = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0", "LayerNorm_2": "LayerNorm_1",
             "MlpBlock_3": "MlpBlock_0", "Transformer/posembed_input/pos_embedding": "pos_embedding"}
    arrays, blocks = {}, {}
    for key, value in files["jax"].items():
        for old, new in names.items():
            key = key.replace(old, new)
        if key.startswith("Transformer/encoderblock_"):
            blocks.setdefault(key.split("/", 2)[2], []).append(value.numpy())  # keys come in block order
        else:
            arrays[f"params/{key}"] = value.numpy()
    arrays |= {f"params/Transformer/encoderblock/{k}": np.stack(v) for k, v in blocks.items()}
    arrays |= {"params/pre_logits/kernel": np.eye(D, dtype=np.float32), "params/pre_logits/bias": np.zeros(D)}
    np.savez(tmp_path / "bv.npz", **arrays)
    got, ref = read_image_vit(tmp_path / "bv.npz"), read_image_vit(files["npz"])
    assert set(got) == set(ref) - {"head.weight", "head.bias"}
    for k in got:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("fmt", ["hf", "npz"])
def test_hf_vit_parity(hf_vit, files, fmt):
    """Our frame-wise ViT loaded from the checkpoint = Hugging Face ViT on a 1-frame clip: all tokens after
    the final LayerNorm (CLS included, pooler aside) and the classifier logits."""
    model = FramewiseViT(FramewiseViTConfig(**TINY, num_frames=1, norm_eps=hf_vit.config.layer_norm_eps)).eval()
    init_from_image(model, files[fmt], load_head=True)
    x = torch.randn(2, 3, 1, IMG, IMG)
    with torch.no_grad():
        ref = hf_vit(x[:, :, 0], output_hidden_states=True)
        ours = model.forward_features(x)[:, 0]  # (B, 1 + N, D)
        hidden = hf_vit.vit.layernorm(ref.hidden_states[-1])
        assert (ours - hidden).abs().max() < 1e-4
        assert (ours[:, 0] - hidden[:, 0]).abs().max() < 1e-4
        assert (model(x) - ref.logits).abs().max() < 1e-4


def test_positional_embedding_resampled_like_hf(hf_vit, files):
    """A 48² model from the 32² checkpoint: bicubic resampling of the patch grid, as HF's interpolation."""
    model = FramewiseViT(FramewiseViTConfig(**{**TINY, "img_size": 48}, num_frames=1,
                                            norm_eps=hf_vit.config.layer_norm_eps)).eval()
    init_from_image(model, files["hf"], load_head=True)
    x = torch.randn(2, 3, 1, 48, 48)
    with torch.no_grad():
        ref = hf_vit(x[:, :, 0], interpolate_pos_encoding=True).logits
        assert (model(x) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("order", ["st", "ts"])
def test_vivit_model3_zero_temporal_msa_is_the_image_vit_per_frame(order):
    image = _image_vit(class_token=False, seed=1)
    video = vf.create_model("vivit_tiny_fsa", tubelet_t=1, order=order).eval()
    init_from_image(video, image.state_dict())
    x = torch.randn(2, 3, 4, IMG, IMG)
    with torch.no_grad():
        ours = rearrange(video.forward_features(x), "b (t n) d -> b t n d", t=4)
        torch.testing.assert_close(ours, image.forward_features(x), rtol=0, atol=1e-5)
    temporal = video.blocks[0].attns[1 if order == "st" else 0]
    assert all(p.abs().sum() == 0 for p in temporal.proj.parameters())
    # only the output projection is zero, so the sublayer is no stationary point: its projection gets a
    # gradient (qkv follows once the projection is non-zero), unlike an all-zero MSA
    video.train()
    video(x).square().sum().backward()
    assert temporal.proj.weight.grad.abs().sum() > 0 and temporal.qkv.weight.abs().sum() > 0


def test_vivit_model2_spatial_encoder_is_the_image_vit():
    """Model 2 with Lt = 0: its frame representations h_i are the image ViT's CLS features of each frame."""
    image = _image_vit(class_token=True, seed=2)
    video = vf.create_model("vivit_tiny_fe", tubelet_t=1, temporal_depth=0).eval()
    init_from_image(video, image.state_dict())
    x = torch.randn(2, 3, 4, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(video.forward_features(x), image.forward_features(x)[:, :, 0], rtol=0, atol=1e-5)


def test_timesformer_divided_single_frame_is_the_image_vit():
    image = _image_vit(class_token=True, seed=3)
    video = vf.create_model("timesformer_tiny_divided", num_frames=1).eval()
    init_from_image(video, image.state_dict(), load_head=True)
    x = torch.randn(2, 3, 1, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(video.forward_features(x), image.forward_features(x)[:, 0], rtol=0, atol=1e-5)
        torch.testing.assert_close(video(x), image(x), rtol=0, atol=1e-5)
    block = video.blocks[0]
    assert torch.equal(block.attns[0].qkv.weight, image.blocks[0].attns[0].qkv.weight)  # copied, not zeroed
    assert block.attns[0].fc.weight.abs().sum() == 0 and block.attns[0].fc.bias.abs().sum() == 0


@pytest.mark.parametrize("t", [2, 3])
def test_central_frame_tubelet_is_uniform_sampling_of_the_central_frame(t):
    image = _image_vit(class_token=True, seed=4)
    video = vf.create_model("vivit_tiny_joint", num_frames=2 * t, tubelet_t=t).eval()
    init_from_image(video, image.state_dict(), tubelet_init="central")
    x = torch.randn(2, 3, 2 * t, IMG, IMG)
    with torch.no_grad():
        tokens, grid = video.patch_embed(x)
        expected, _ = image.patch_embed(x[:, :, t // 2 :: t])
    assert grid.t == 2
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-5)


def test_inflated_tubelet_on_a_constant_clip_is_the_2d_embedding():
    image = _image_vit(class_token=True, seed=5)
    video = vf.create_model("vivit_tiny_joint", num_frames=4, tubelet_t=2).eval()
    init_from_image(video, image.state_dict(), tubelet_init="inflate")
    frame = torch.randn(2, 3, 1, IMG, IMG)
    with torch.no_grad():
        tokens, _ = video.patch_embed(frame.expand(-1, -1, 4, -1, -1))
        expected, _ = image.patch_embed(frame.expand(-1, -1, 2, -1, -1))
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-5)


def test_positional_embedding_repeated_over_time(files):
    image = read_image_vit(files["npz"])
    joint = init_from_image(vf.create_model("vivit_tiny_joint"), files["npz"])
    pos = rearrange(joint.pos_embed.pos[:, 1:], "1 (t n) d -> t n d", t=2)
    assert torch.equal(pos[0], pos[1]) and torch.equal(pos[0], image["pos_embed.pos"][0, 1:])
    assert torch.equal(joint.pos_embed.pos[:, :1], image["pos_embed.pos"][:, :1])
    sep = init_from_image(vf.create_model("timesformer_tiny_joint"), files["npz"])
    assert torch.equal(sep.pos_embed.space, image["pos_embed.pos"]) and sep.pos_embed.time.abs().sum() == 0


@pytest.mark.parametrize("name", vf.list_models("vit_tiny_*") + vf.list_models("vivit_tiny_*")
                         + vf.list_models("timesformer_tiny_*"))
def test_every_video_model_initialises(files, name):
    model = init_from_image(vf.create_model(name).eval(), files["safetensors"], tubelet_init="inflate")
    image = read_image_vit(files["safetensors"])
    assert torch.equal(model.blocks[-1].mlp.fc2.weight, image[f"blocks.{DEPTH - 1}.mlp.fc2.weight"])
    assert not torch.equal(model.head.weight, image["head.weight"])  # the head stays the model's own
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 4, IMG, IMG))).all()


def test_zero_new_false_copies_the_pretrained_msa():
    image = _image_vit(class_token=True, seed=6)
    fsa = init_from_image(vf.create_model("vivit_tiny_fsa"), image.state_dict(), zero_new=False)
    assert torch.equal(fsa.blocks[0].attns[1].qkv.weight, image.blocks[0].attns[0].qkv.weight)
    tsf = vf.create_model("timesformer_tiny_divided")
    own_fc = tsf.blocks[0].attns[0].fc.weight.detach().clone()
    init_from_image(tsf, image.state_dict(), zero_new=False)
    assert torch.equal(tsf.blocks[0].attns[0].fc.weight, own_fc) and own_fc.abs().sum() > 0


def test_mismatches_list_the_bad_keys(files, tmp_path):
    deeper = vf.create_model("vivit_tiny_joint", depth=3)
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.2\.mlp\.fc1\.weight") as err:
        init_from_image(deeper, files["npz"])
    assert "blocks.2.attns.0.qkv.weight" in err.value.missing
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.1\.") as err:
        init_from_image(vf.create_model("vivit_tiny_joint", depth=1), files["npz"])
    assert "blocks.1.norms.0.weight" in err.value.unexpected
    with pytest.raises(CheckpointMismatchError, match="patch_embed.proj.weight") as err:
        init_from_image(vf.create_model("vivit_tiny_joint", patch_size=16), files["npz"])
    assert "patch_embed.proj.weight" in err.value.misshaped
    with pytest.raises(CheckpointMismatchError, match="head.weight"):
        init_from_image(vf.create_model("vit_tiny_framewise", num_classes=7), files["npz"], load_head=True)
    save_file({**files["timm"], "fc_norm.weight": torch.ones(D)}, tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointMismatchError, match="fc_norm.weight"):
        read_image_vit(tmp_path / "extra.safetensors")
    np.savez(tmp_path / "bad.npz", **{k: v.numpy() for k, v in files["jax"].items()
                                       if "encoderblock_1/MlpBlock_3/Dense_1" not in k})
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.1\.mlp\.fc2\.bias"):
        read_image_vit(tmp_path / "bad.npz")
    (tmp_path / "weights.ckpt").write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="unknown image checkpoint format"):
        read_image_vit(tmp_path / "weights.ckpt")
    with pytest.raises(ValueError, match="tubelet_init"):
        init_from_image(vf.create_model("vivit_tiny_joint"), files["npz"], tubelet_init="mean")
