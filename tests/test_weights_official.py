"""Official checkpoints (TimeSformer ``.pyth``, TokShift-Transformer / MSCA ``.pth``) through ``load_pretrained``.

The files are built here in each release's exact layout (key names, shapes, wrappers, prefixes and config as
the authors' code writes them; random weights). Loading is checked exactly, tensor by tensor; logits are
checked against Hugging Face ``transformers``, which runs offline: its TimeSformer is the official model (same
blocks, same nearest-neighbour resizing), its ViT the TokShift ViT baseline per frame.
"""
from __future__ import annotations

import pytest
import torch
import yaml

from videoformer.layers import fused_attention
from videoformer.layers.shift import shift_frames
from videoformer.models import FramewiseViT, TimeSformer, create_model
from videoformer.weights import CheckpointError, CheckpointMismatchError, init_from_image, load_pretrained
from videoformer.weights.common import FORMATS

transformers = pytest.importorskip("transformers")

D, DEPTH, HEADS, P, SIZE, T, CLASSES = 64, 2, 4, 8, 32, 4, 7
SCHEMES = {"divided": "divided_space_time", "joint": "joint_space_time", "space": "space_only"}


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape) * 0.1


def timesformer_state(scheme: str, frames: int = T, classes: int = CLASSES) -> dict[str, torch.Tensor]:
    """``vit_base_patch16_224``'s state dict (timesformer/models/vit.py), keys with the wrapper's ``model.``."""
    n = (SIZE // P) ** 2
    s = {"cls_token": _rand(1, 1, D), "pos_embed": _rand(1, n + 1, D), "patch_embed.proj.weight": _rand(D, 3, P, P),
         "patch_embed.proj.bias": _rand(D), "norm.weight": 1 + _rand(D), "norm.bias": _rand(D),
         "head.weight": _rand(classes, D), "head.bias": _rand(classes)}
    if scheme != "space":
        s["time_embed"] = _rand(1, frames, D)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        parts = ["norm1", "attn", "norm2"] + (["temporal_norm1", "temporal_attn"] if scheme == "divided" else [])
        for part in parts:
            if "norm" in part:
                s |= {f"{b}{part}.weight": 1 + _rand(D), f"{b}{part}.bias": _rand(D)}
            else:
                s |= {f"{b}{part}.qkv.weight": _rand(3 * D, D), f"{b}{part}.qkv.bias": _rand(3 * D),
                      f"{b}{part}.proj.weight": _rand(D, D), f"{b}{part}.proj.bias": _rand(D)}
        if scheme == "divided":
            s |= {f"{b}temporal_fc.weight": _rand(D, D), f"{b}temporal_fc.bias": _rand(D)}
        s |= {f"{b}mlp.fc1.weight": _rand(4 * D, D), f"{b}mlp.fc1.bias": _rand(4 * D),
              f"{b}mlp.fc2.weight": _rand(D, 4 * D), f"{b}mlp.fc2.bias": _rand(D)}
    return {f"model.{k}": v for k, v in s.items()}


def release_file(path, scheme: str, frames: int = T, **cfg_data) -> dict:
    """A ``.pyth`` as timesformer/utils/checkpoint.py writes it: epoch, model_state, optimizer_state, cfg.dump()."""
    cfg = {"TRAIN": {"DATASET": "kinetics"}, "TIMESFORMER": {"ATTENTION_TYPE": SCHEMES[scheme]},
           "MODEL": {"MODEL_NAME": "vit_base_patch16_224", "ARCH": "vit", "NUM_CLASSES": CLASSES},
           "DATA": {"NUM_FRAMES": frames, "SAMPLING_RATE": 32, "TRAIN_CROP_SIZE": SIZE, "TEST_CROP_SIZE": SIZE,
                    "MEAN": [0.45] * 3, "STD": [0.225] * 3, **cfg_data}}
    state = timesformer_state(scheme, frames)
    torch.save({"epoch": 15, "model_state": state, "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.005}]},
                "cfg": yaml.safe_dump(cfg)}, path)
    return state


_HF_BLOCK = {"norm1": "layernorm_before", "attn.qkv": "attention.attention.qkv", "attn.proj": "attention.output.dense",
             "temporal_norm1": "temporal_layernorm", "temporal_attn.qkv": "temporal_attention.attention.qkv",
             "temporal_attn.proj": "temporal_attention.output.dense", "temporal_fc": "temporal_dense",
             "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}


def hf_timesformer(state: dict[str, torch.Tensor], scheme: str, frames: int = T):
    """The Hugging Face TimeSformer holding the same weights (its names are the official ones renamed), for clips
    of ``frames`` frames: its blocks take T from the config, so a clip of another length needs a model built for
    it, holding the checkpoint's own time embedding (resized at run time by nearest neighbour, as officially)."""
    cfg = transformers.TimesformerConfig(hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                         intermediate_size=4 * D, image_size=SIZE, patch_size=P, num_frames=frames,
                                         num_labels=CLASSES, attention_type=SCHEMES[scheme])
    hf = transformers.TimesformerForVideoClassification(cfg).eval()
    fixed = {"cls_token": "timesformer.embeddings.cls_token", "pos_embed": "timesformer.embeddings.position_embeddings",
             "time_embed": "timesformer.embeddings.time_embeddings",
             "patch_embed.proj.weight": "timesformer.embeddings.patch_embeddings.projection.weight",
             "patch_embed.proj.bias": "timesformer.embeddings.patch_embeddings.projection.bias"}
    out = {}
    for key, value in state.items():
        k = key.removeprefix("model.")
        if k in fixed:
            out[fixed[k]] = value
        elif k.startswith(("norm.", "head.")):
            out[k.replace("norm.", "timesformer.layernorm.").replace("head.", "classifier.")] = value
        else:
            _, i, rest = k.split(".", 2)
            module, leaf = rest.rsplit(".", 1)
            out[f"timesformer.encoder.layer.{i}.{_HF_BLOCK[module]}.{leaf}"] = value
    if "timesformer.embeddings.time_embeddings" in out:
        hf.timesformer.embeddings.time_embeddings = torch.nn.Parameter(out["timesformer.embeddings.time_embeddings"])
    hf.load_state_dict(out, strict=True)
    return hf


def official_logits(hf, x: torch.Tensor, scheme: str) -> torch.Tensor:
    """The official model's logits, computed with Hugging Face's modules; space-only reads out as the official
    code does: every token averaged over frames before the final LayerNorm, then CLS -> head."""
    with torch.no_grad():
        if scheme != "space":
            return hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
        hidden = hf.timesformer(pixel_values=x.permute(0, 2, 1, 3, 4), output_hidden_states=True).hidden_states[-1]
        tokens = hidden.reshape(x.shape[0], x.shape[2], *hidden.shape[1:]).mean(1)
        return hf.classifier(hf.timesformer.layernorm(tokens)[:, 0])


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_timesformer_release_loads_exactly_and_matches_the_official_logits(tmp_path, scheme):
    path = tmp_path / "checkpoint_epoch_00015.pyth"
    state = release_file(path, scheme)
    model = load_pretrained(path, num_heads=HEADS)
    assert isinstance(model, TimeSformer if scheme != "space" else FramewiseViT) and not model.training
    assert model.registry_name == f"timesformer_b16_{scheme}"
    cfg = model.cfg
    assert (cfg.pos_resize, cfg.readout) == ("nearest", "mean_tokens" if scheme == "space" else "mean_logits")
    ours = model.state_dict()
    first = model.blocks[0].attns[0]
    src = "temporal_attn" if scheme == "divided" else "attn"
    assert torch.equal(first.qkv.weight, state[f"model.blocks.0.{src}.qkv.weight"])
    assert torch.equal(ours["patch_embed.proj.weight"][:, :, 0], state["model.patch_embed.proj.weight"])
    assert torch.equal(ours["head.weight"], state["model.head.weight"])
    assert sum(v.numel() for v in ours.values()) == sum(v.numel() for v in state.values())
    pre = model.preprocessing
    assert (pre.mean, pre.std, pre.stride, pre.num_frames, pre.img_size) == ((0.45,) * 3, (0.225,) * 3, 32, T, SIZE)
    for frames, size in ((T, SIZE), (2 * T, 48)):  # the checkpoint's own size, then the official resizing rule
        hf = hf_timesformer(state, scheme, frames)
        x = torch.randn(2, 3, frames, size, size, generator=torch.Generator().manual_seed(frames))
        for fused in (True, False):
            with torch.no_grad(), fused_attention(fused, model):
                got = model(x)
            assert (got - official_logits(hf, x, scheme)).abs().max().item() < 1e-4, (frames, size, fused)


def test_readout_and_resize_rule_are_what_make_the_match(tmp_path):
    """The library defaults (mean of frame logits, bicubic / linear resizing) give other logits: the conventions
    are carried by the checkpoint, not coincidences."""
    path = tmp_path / "space"
    state = release_file(path, "space")
    official, ours = load_pretrained(path, num_heads=HEADS), load_pretrained(path, num_heads=HEADS, readout="mean_logits")
    x = torch.randn(2, 3, T, SIZE, SIZE)
    with torch.no_grad():
        assert (official(x) - ours(x)).abs().max() > 1e-3
    path = tmp_path / "divided"
    release_file(path, "divided")
    nearest, smooth = load_pretrained(path, num_heads=HEADS), load_pretrained(path, num_heads=HEADS,
                                                                              pos_resize="interpolate")
    x = torch.randn(1, 3, 2 * T, 48, 48)
    with torch.no_grad():
        assert (nearest(x) - smooth(x)).abs().max() > 1e-3
    assert torch.equal(state["model.pos_embed"], official.pos_embed.pos)


def test_timesformer_names_and_bare_state_dicts(tmp_path):
    """-HR / -L are named from the clip; a bare state dict (no wrapper) with or without ``model.`` loads when it
    is recognisably video; any suffix works."""
    for frames, name in ((64, "timesformer_l"), (T, "timesformer_b16_divided")):
        torch.save(timesformer_state("divided", frames=frames), tmp_path / "weights")
        model = load_pretrained(tmp_path / "weights", num_heads=HEADS)
        assert model.registry_name == name
        assert model.preprocessing.mean == (0.45,) * 3  # the family's registry convention (no cfg in the file)
    stripped = {k.removeprefix("model."): v for k, v in timesformer_state("joint").items()}
    torch.save(stripped, tmp_path / "joint.pth")
    assert load_pretrained(tmp_path / "joint.pth", num_heads=HEADS).registry_name == "timesformer_b16_joint"


def test_init_from_image_refuses_video_checkpoints(tmp_path):
    """Before this, a space-only TimeSformer with ``model.`` stripped was accepted as an image ViT with a fresh
    head. Anything that marks a file as video (release wrapper, ``model.`` prefix, time embedding, TokShift
    keys) is refused; the error points to load_pretrained."""
    video = create_model("vivit_tiny_joint")
    stripped = {k.removeprefix("model."): v for k, v in timesformer_state("space").items()}
    torch.save({"model_state": stripped, "cfg": "TIMESFORMER:\n  ATTENTION_TYPE: space_only\n"}, tmp_path / "a.pth")
    torch.save(timesformer_state("space"), tmp_path / "b.pth")
    torch.save({k.removeprefix("model."): v for k, v in timesformer_state("divided").items()}, tmp_path / "c.pth")
    torch.save({"state_dict": tokshift_state()}, tmp_path / "d.pth")
    for name in "abcd":
        with pytest.raises(CheckpointError, match="video checkpoint.*load_pretrained"):
            init_from_image(video, tmp_path / f"{name}.pth")


def test_unrecognised_and_partial_files(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2), "step": 3}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as info:
        load_pretrained(tmp_path / "other.pt")
    for fmt in FORMATS:
        assert fmt in str(info.value)
    assert "encoder.weight" in str(info.value) and "step" in str(info.value)
    path = tmp_path / "partial.pyth"
    state = release_file(path, "divided")
    del state["model.blocks.1.temporal_fc.bias"]
    state["model.blocks.0.mlp.fc2.bias"] = torch.zeros(D + 1)
    state["model.extra"] = torch.zeros(1)
    torch.save({"model_state": state, "cfg": yaml.safe_dump({"TIMESFORMER": {"ATTENTION_TYPE": "divided_space_time"}})},
               path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_pretrained(path, num_heads=HEADS)
    err = info.value
    assert err.missing == ["model.blocks.1.temporal_fc.bias"] and err.unexpected == ["model.extra"]
    assert err.misshaped == {"model.blocks.0.mlp.fc2.bias": ((D,), (D + 1,))}
    release_file(tmp_path / "ok.pyth", "joint")
    with pytest.raises(CheckpointError, match="not a TimeSformer"):
        load_pretrained(tmp_path / "ok.pyth", "vivit_tiny_joint")


def test_overrides_transfer_into_another_size_and_head(tmp_path):
    """Other frames / size: the positional embeddings are resized once, by the checkpoint's rule, which equals
    running the checkpoint-sized model on the larger clip; another class count gets a fresh head."""
    path = tmp_path / "ckpt.pyth"
    release_file(path, "divided")
    base = load_pretrained(path, num_heads=HEADS)
    big = load_pretrained(path, num_heads=HEADS, num_frames=2 * T, img_size=48, num_classes=3)
    assert (big.cfg.num_frames, big.cfg.img_size, big.cfg.num_classes) == (2 * T, 48, 3)
    assert (big.preprocessing.num_frames, big.preprocessing.img_size) == (2 * T, 48)
    x = torch.randn(1, 3, 2 * T, 48, 48)
    with torch.no_grad():
        want = base.forward_head(base.forward_features(x), pre_logits=True)
        got = big.forward_head(big.forward_features(x), pre_logits=True)
    assert (want - got).abs().max().item() < 1e-5 and big(x).shape == (1, 3)


# -- TokShift-Transformer / MSCA ----------------------------------------------------------------------------


def tokshift_state(classes: int = CLASSES) -> dict[str, torch.Tensor]:
    """``VideoNet`` under DDP (vit_models/modeling*.py): ``module.base_model.transformer...`` keys."""
    n = (SIZE // P) ** 2
    e, s = "module.base_model.transformer.embeddings.", {}
    s |= {e + "cls_token": _rand(1, 1, D), e + "position_embeddings": _rand(1, n + 1, D),
          e + "patch_embeddings.weight": _rand(D, 3, P, P), e + "patch_embeddings.bias": _rand(D)}
    enc = "module.base_model.transformer.encoder."
    for i in range(DEPTH):
        b = f"{enc}layer.{i}."
        for norm in ("attention_norm", "ffn_norm"):
            s |= {f"{b}{norm}.weight": 1 + _rand(D), f"{b}{norm}.bias": _rand(D)}
        for lin in ("query", "key", "value", "out"):
            s |= {f"{b}attn.{lin}.weight": _rand(D, D), f"{b}attn.{lin}.bias": _rand(D)}
        s |= {f"{b}ffn.fc1.weight": _rand(4 * D, D), f"{b}ffn.fc1.bias": _rand(4 * D),
              f"{b}ffn.fc2.weight": _rand(D, 4 * D), f"{b}ffn.fc2.bias": _rand(D)}
    s |= {enc + "encoder_norm.weight": 1 + _rand(D), enc + "encoder_norm.bias": _rand(D),
          "module.base_model.head.weight": _rand(classes, D), "module.base_model.head.bias": _rand(classes)}
    return s


def save_tokshift(path) -> dict[str, torch.Tensor]:
    """As main_ddp_shift_v3.py saves it (the scheduler's milestones are a Counter)."""
    from collections import Counter

    state = tokshift_state()
    torch.save({"epoch": 18, "state_dict": state, "best_acc1": torch.tensor(77.3), "optimizer": {"state": {}},
                "scheduler": {"milestones": Counter([10, 15, 18]), "gamma": 0.1}}, path)
    return state


def test_tokshift_file_must_name_its_model(tmp_path):
    save_tokshift(tmp_path / "best_ckpt_e17.pth")
    with pytest.raises(CheckpointError, match="tokenshift_b16.*msca_b16"):
        load_pretrained(tmp_path / "best_ckpt_e17.pth")
    with pytest.raises(CheckpointError, match="not a model of TokShift"):
        load_pretrained(tmp_path / "best_ckpt_e17.pth", "timesformer_tiny_divided")


@pytest.mark.parametrize("name, layout", [("vit_tiny_framewise", None), ("tokenshift_tiny", "fwd_back"),
                                          ("msca_tiny", "fwd_rest_back")])
def test_tokshift_release_loads_exactly(tmp_path, name, layout):
    state = save_tokshift(tmp_path / "ckpt.pth")
    model = load_pretrained(tmp_path / "ckpt.pth", name, num_heads=HEADS)
    assert getattr(model.cfg, "shift_layout", None) == layout
    qkv = model.blocks[1].attns[0].qkv.weight
    b = "module.base_model.transformer.encoder.layer.1.attn."
    assert torch.equal(qkv, torch.cat([state[b + n + ".weight"] for n in ("query", "key", "value")]))
    assert torch.equal(model.norm.weight, state["module.base_model.transformer.encoder.encoder_norm.weight"])
    pre = model.preprocessing
    assert (pre.mean, pre.std, pre.stride, pre.img_size) == ((0.5,) * 3, (0.5,) * 3, 32, SIZE)
    if name == "tokenshift_tiny":
        assert (model.cfg.channels_back, model.cfg.channels_fwd) == (D // 4, D // 4)
    if name == "msca_tiny":
        assert (model.cfg.variant, model.cfg.heads_back, model.cfg.heads_fwd) == ("KV", 1, 1)


def test_tokshift_vit_baseline_matches_hugging_face_vit_per_frame(tmp_path):
    """The ViT baseline is an image ViT per frame with the frame logits averaged (VideoNet's avg consensus)."""
    state = save_tokshift(tmp_path / "ckpt.pth")
    model = load_pretrained(tmp_path / "ckpt.pth", "vit_tiny_framewise", num_heads=HEADS)
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=4 * D, image_size=SIZE,
        patch_size=P, num_labels=CLASSES, layer_norm_eps=1e-6)).eval()
    e, ours = "module.base_model.transformer.", {}
    names = {"attention_norm": "layernorm_before", "ffn_norm": "layernorm_after", "ffn.fc1": "mlp.fc1",
             "ffn.fc2": "mlp.fc2", "attn.query": "attention.q_proj", "attn.key": "attention.k_proj",
             "attn.value": "attention.v_proj", "attn.out": "attention.o_proj"}  # transformers 5 names
    for key, value in state.items():
        k = key.removeprefix(e)
        if k.startswith("encoder.layer."):
            _, _, i, rest = k.split(".", 3)
            module, leaf = rest.rsplit(".", 1)
            ours[f"vit.layers.{i}.{names[module]}.{leaf}"] = value
        else:
            ours[{"embeddings.cls_token": "vit.embeddings.cls_token",
                  "embeddings.position_embeddings": "vit.embeddings.position_embeddings",
                  "embeddings.patch_embeddings.weight": "vit.embeddings.patch_embeddings.projection.weight",
                  "embeddings.patch_embeddings.bias": "vit.embeddings.patch_embeddings.projection.bias",
                  "encoder.encoder_norm.weight": "vit.layernorm.weight", "encoder.encoder_norm.bias": "vit.layernorm.bias",
                  "module.base_model.head.weight": "classifier.weight",
                  "module.base_model.head.bias": "classifier.bias"}[k]] = value
    hf.load_state_dict(ours, strict=True)
    x = torch.randn(2, 3, T, SIZE, SIZE)
    with torch.no_grad():
        want = hf(pixel_values=x.permute(0, 2, 1, 3, 4).flatten(0, 1)).logits.reshape(2, T, -1).mean(1)
        assert (model(x) - want).abs().max().item() < 1e-4


def test_official_shift_layouts():
    """TokShift's shift_tk: the first fold channels from t+1, the next fold from t-1. AttentionShift: the first
    fold heads from t+1, the last fold from t-1. Zeros at the clip ends; everything else unchanged."""
    frames, c, fold = 3, 8, 2
    x = torch.arange(2 * frames * c, dtype=torch.float32).reshape(2 * frames, c)
    clip = x.reshape(2, frames, c)
    tok = shift_frames(x, frames, 1, fold, fold, layout="fwd_back").reshape(2, frames, c)
    want = clip.clone()
    want[:, :, :fold] = torch.cat([clip[:, 1:, :fold], torch.zeros(2, 1, fold)], 1)
    want[:, :, fold:2 * fold] = torch.cat([torch.zeros(2, 1, fold), clip[:, :-1, fold:2 * fold]], 1)
    assert torch.equal(tok, want)
    att = shift_frames(x, frames, 1, fold, fold, layout="fwd_rest_back").reshape(2, frames, c)
    want = clip.clone()
    want[:, :, :fold] = torch.cat([clip[:, 1:, :fold], torch.zeros(2, 1, fold)], 1)
    want[:, :, c - fold:] = torch.cat([torch.zeros(2, 1, fold), clip[:, :-1, c - fold:]], 1)
    assert torch.equal(att, want)
    ours = shift_frames(x, frames, 1, fold, fold).reshape(2, frames, c)  # default: [t-1 | t+1 | rest]
    assert torch.equal(ours[:, 1, :fold], clip[:, 0, :fold]) and torch.equal(ours[:, 0, fold:2 * fold],
                                                                            clip[:, 1, fold:2 * fold])
