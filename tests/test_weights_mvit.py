"""MViT v1 checkpoints -> videoformer: PySlowFast's 2021 release layout (separate q / k / v, pooling LayerNorms
with eps 1e-5) and current layout (fused qkv, 1e-6), with and without the ``cfg`` a ``.pyth`` carries, and
torchvision's ``mvit_v1_b`` state dicts. Files are written in each layout (key names and shapes from the
authors' code) from a random tiny model and must give its logits exactly; the released configs must give the
registered models. (Parity with the authors' own code on MViT-B is measured outside the repository.)"""
from __future__ import annotations

import re

import pytest
import torch
import yaml

from videoformer.models import create_model, model_config
from videoformer.weights.common import FORMATS, CheckpointError, CheckpointMismatchError, read_file
from videoformer.weights.mvit import (config_from_cfg, convert_mvit_checkpoint, detect_layout, load_mvit,
                                      read_checkpoint)
from videoformer.weights.pretrained import from_converted

LAYOUTS = ("pyslowfast_2021", "pyslowfast", "torchvision")
EPS = {"pyslowfast_2021": 1e-5, "pyslowfast": 1e-6, "torchvision": 1e-6}


def clip(b=2, t=4, s=32):
    return torch.randn(b, 3, t, s, s)


def tiny(**overrides):
    """mvit_tiny with every tensor random (LayerNorms and embeddings included), so no mapping hides behind an
    initial value."""
    model = create_model("mvit_tiny", pool_kernel=(3, 3, 3), **overrides).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model


def to_torchvision(sd):
    """Our state dict in torchvision's ``mvit_v1_b`` layout (the test's own map, independent of the loader's):
    ``conv_proj``, ``pos_encoding.*`` (class token and positions as vectors), pools ``pool_q.pool`` +
    ``pool_q.norm_act.0``, ``attn.project.0``, ``mlp.0`` / ``mlp.3``, ``project``, ``head.1``."""
    out = {"conv_proj.weight": sd["patch_embed.proj.weight"], "conv_proj.bias": sd["patch_embed.proj.bias"],
           "pos_encoding.class_token": sd["cls_token"].reshape(-1),
           "pos_encoding.class_pos": sd["pos_embed.space"][0, 0],
           "pos_encoding.spatial_pos": sd["pos_embed.space"][0, 1:],
           "pos_encoding.temporal_pos": sd["pos_embed.time"][0],
           "head.1.weight": sd["head.weight"], "head.1.bias": sd["head.bias"]}
    names = {"attn.proj": "attn.project.0", "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.3", "proj": "project",
             **{f"attn.pool_{n}.norm": f"attn.pool_{n}.norm_act.0" for n in "qkv"}}
    for key, value in sd.items():
        block = re.match(r"^(blocks\.\d+)\.(.+)\.(weight|bias)$", key)
        if block:
            out[f"{block[1]}.{names.get(block[2], block[2])}.{block[3]}"] = value
        elif key.startswith("norm."):
            out[key] = value
    return out


def to_pyslowfast(sd, fused: bool):
    """Our state dict in PySlowFast's MViT v1 layout: ``q`` / ``k`` / ``v`` (2021) or ``qkv`` (current),
    ``pool_q`` + ``norm_q``, split positional embeddings, ``head.projection``."""
    out = {"pos_embed_class": sd["pos_embed.space"][:, :1], "pos_embed_spatial": sd["pos_embed.space"][:, 1:],
           "pos_embed_temporal": sd["pos_embed.time"], "head.projection.weight": sd["head.weight"],
           "head.projection.bias": sd["head.bias"]}
    for key, value in sd.items():
        if ".attn.qkv." in key and not fused:
            for name, part in zip("qkv", value.chunk(3)):
                out[key.replace(".qkv.", f".{name}.")] = part
        elif m := re.match(r"^(blocks\.\d+\.attn)\.pool_([qkv])\.pool\.weight$", key):
            out[f"{m[1]}.pool_{m[2]}.weight"] = value
        elif m := re.match(r"^(blocks\.\d+\.attn)\.pool_([qkv])\.norm\.(weight|bias)$", key):
            out[f"{m[1]}.norm_{m[2]}.{m[3]}"] = value
        elif not key.startswith(("pos_embed.", "head.")):
            out[key] = value
    return out


def slowfast_cfg(mvit: dict, data: dict, classes: int, spatial_crops: int = 1, **sections) -> str:
    """A ``cfg`` as PySlowFast's ``save_checkpoint`` stores it (``cfg.dump()``, YAML)."""
    return yaml.safe_dump({"MODEL": {"ARCH": "mvit", "MODEL_NAME": "MViT", "NUM_CLASSES": classes},
                           "MVIT": {"MODE": "conv", "NORM": "layernorm", "CLS_EMBED_ON": True, "POOL_FIRST": False,
                                    "NORM_STEM": False, "MLP_RATIO": 4.0, "QKV_BIAS": True, **mvit},
                           "DATA": {"MEAN": [0.45] * 3, "STD": [0.225] * 3, "TRAIN_JITTER_SCALES": [256, 320],
                                    "INPUT_CHANNEL_NUM": [3], **data},
                           "TEST": {"NUM_SPATIAL_CROPS": spatial_crops}, **sections})


# configs/Kinetics/MVIT_B_16x4_CONV.yaml, MVIT_B_32x3_CONV.yaml (DEPTH 24, no POOL_KVQ_KERNEL) and
# configs/ImageNet/MVIT_B_16_CONV.yaml of facebookresearch/SlowFast
B16X4 = dict(SEP_POS_EMBED=True, DEPTH=16, NUM_HEADS=1, EMBED_DIM=96, PATCH_KERNEL=[3, 7, 7], PATCH_STRIDE=[2, 4, 4],
             PATCH_PADDING=[1, 3, 3], DIM_MUL=[[1, 2.0], [3, 2.0], [14, 2.0]], HEAD_MUL=[[1, 2.0], [3, 2.0], [14, 2.0]],
             POOL_KVQ_KERNEL=[3, 3, 3], POOL_KV_STRIDE_ADAPTIVE=[1, 8, 8],
             POOL_Q_STRIDE=[[1, 1, 2, 2], [3, 1, 2, 2], [14, 1, 2, 2]])
B32X3 = dict(B16X4, DEPTH=24, POOL_KVQ_KERNEL=None, POOL_Q_STRIDE=[[2, 1, 2, 2], [5, 1, 2, 2], [21, 1, 2, 2]],
             DIM_MUL=[[2, 2.0], [5, 2.0], [21, 2.0]], HEAD_MUL=[[2, 2.0], [5, 2.0], [21, 2.0]])
IMAGE = dict(B16X4, PATCH_2D=True, SEP_POS_EMBED=False, PATCH_KERNEL=[7, 7], PATCH_STRIDE=[4, 4], PATCH_PADDING=[3, 3],
             POOL_KVQ_KERNEL=[1, 3, 3], POOL_KV_STRIDE_ADAPTIVE=[1, 4, 4])
TINY = dict(SEP_POS_EMBED=True, DEPTH=5, NUM_HEADS=1, EMBED_DIM=16, PATCH_KERNEL=[3, 7, 7], PATCH_STRIDE=[2, 4, 4],
            PATCH_PADDING=[1, 3, 3], DIM_MUL=[[1, 2.0], [3, 2.0]], HEAD_MUL=[[1, 2.0], [3, 2.0]],
            POOL_KVQ_KERNEL=[3, 3, 3], POOL_KV_STRIDE_ADAPTIVE=[1, 4, 4], POOL_Q_STRIDE=[[1, 1, 2, 2], [3, 1, 2, 2]])
TINY_DATA = dict(NUM_FRAMES=4, SAMPLING_RATE=4, TRAIN_CROP_SIZE=32, TEST_CROP_SIZE=32)


def write(tmp_path, model, layout: str, with_cfg: bool):
    sd = model.state_dict()
    if layout == "torchvision":
        path = tmp_path / "mvit_v1_b.pth"
        torch.save(to_torchvision(sd), path)
        return path
    state = to_pyslowfast(sd, fused=layout == "pyslowfast")
    # slowfast/utils/checkpoint.py save_checkpoint: epoch, model_state, optimizer_state (an AdamW state dict), cfg
    adamw = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
             "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05,
                               "amsgrad": False, "foreach": None, "maximize": False, "capturable": False,
                               "differentiable": False, "fused": None, "params": [0]}]}
    ckpt = {"epoch": 200, "model_state": state, "optimizer_state": adamw}
    if with_cfg:
        mvit = dict(TINY, **({"SEPARATE_QKV": False} if layout == "pyslowfast" else {}))  # a key the 2021 code lacks
        ckpt["cfg"] = slowfast_cfg(mvit, TINY_DATA, 10)
    path = tmp_path / "checkpoint_epoch_00200.pyth"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("layout, with_cfg", [("pyslowfast_2021", True), ("pyslowfast_2021", False),
                                              ("pyslowfast", True), ("pyslowfast", False), ("torchvision", False)])
def test_mvit_checkpoints_load_exactly(tmp_path, layout, with_cfg):
    source = tiny(pool_norm_eps=EPS[layout])
    path = write(tmp_path, source, layout, with_cfg)
    obj = read_file(path)
    fmt = "mvit_torchvision" if layout == "torchvision" else "mvit_pyslowfast"
    assert FORMATS[fmt].detect(obj) and not FORMATS["scenic_vivit"].detect(obj)
    assert not FORMATS["mvit_torchvision" if fmt == "mvit_pyslowfast" else "mvit_pyslowfast"].detect(obj)
    # without a cfg the K/V stride is not in the weights: the released configs' 1×8×8 unless told
    overrides = {} if with_cfg else {"kv_stride": (1, 4, 4)}
    converted = convert_mvit_checkpoint(obj, str(path), None, overrides)
    assert converted.config["pool_norm_eps"] == EPS[layout]
    target = from_converted(converted)
    assert {p.norm.eps for b in target.blocks for p in (b.attn.pool_q, b.attn.pool_k) if p is not None} == {EPS[layout]}
    for field in ("stage_depths", "stage_dims", "stage_heads", "stage_kv_strides", "pool_kernel", "num_frames",
                  "img_size", "num_classes"):
        assert getattr(target.cfg, field) == getattr(source.cfg, field), field
    x = clip()
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
        torch.testing.assert_close(load_mvit(path, **overrides)(x), source(x), rtol=0, atol=0)
    pre = converted.preprocessing
    assert pre.mean == (0.45,) * 3 and pre.std == (0.225,) * 3 and pre.num_frames == 4 and pre.img_size == 32
    assert pre.resize == (256 if with_cfg else 37)  # cfg: one-crop testing at the short side TRAIN_JITTER_SCALES[0]


def test_released_configs_are_the_registered_models():
    """The cfg of a PySlowFast checkpoint trained with each released config gives the registered model."""
    k400 = dict(NUM_FRAMES=16, SAMPLING_RATE=4, TRAIN_CROP_SIZE=224, TEST_CROP_SIZE=224)
    cases = [(B16X4, k400, 400, "mvit_b_16x4"),
             (B32X3, dict(NUM_FRAMES=32, SAMPLING_RATE=3, TRAIN_CROP_SIZE=224, TEST_CROP_SIZE=224), 600,
              "mvit_b24_32x3"),
             (IMAGE, dict(NUM_FRAMES=1, TRAIN_CROP_SIZE=224, TEST_CROP_SIZE=224, MEAN=[0.485, 0.456, 0.406],
                          STD=[0.229, 0.224, 0.225]), 1000, "mvit_b16_image")]
    for mvit, data, classes, name in cases:
        config, pre = config_from_cfg(yaml.safe_load(slowfast_cfg(mvit, data, classes)), "cfg")
        assert model_config(name, **config) == model_config(name), name  # every field the cfg sets is the registry's
        assert pre.num_frames == data["NUM_FRAMES"] and pre.img_size == 224
    _, pre = config_from_cfg(yaml.safe_load(slowfast_cfg(B16X4, k400, 400)), "cfg")
    assert (pre.mean, pre.std, pre.resize, pre.stride) == ((0.45,) * 3, (0.225,) * 3, 256, 4)
    _, pre = config_from_cfg(yaml.safe_load(slowfast_cfg(B16X4, k400, 400, spatial_crops=3)), "cfg")
    assert pre.resize == 224  # three-crop testing scales the short side to the crop
    _, pre = config_from_cfg(yaml.safe_load(slowfast_cfg(*cases[2][:3])), "cfg")
    assert (pre.mean, pre.resize, pre.num_frames, pre.stride) == ((0.485, 0.456, 0.406), 256, 1, 1)  # ImageNet


def test_load_into_a_given_model_checks_the_conventions(tmp_path):
    source = tiny(pool_norm_eps=1e-5)
    path = write(tmp_path, source, "pyslowfast_2021", with_cfg=False)
    with pytest.raises(CheckpointError, match=r"pooling LayerNorms use eps 1e-05, the model's 1e-06"):
        load_mvit(path, create_model("mvit_tiny", pool_kernel=(3, 3, 3)))
    target = load_mvit(path, create_model("mvit_tiny", pool_kernel=(3, 3, 3), pool_norm_eps=1e-5)).eval()
    x = clip()
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
    assert detect_layout(read_checkpoint(path)) == "pyslowfast"


def test_mvit_checkpoint_mismatch_lists_the_keys():
    foreign = to_torchvision(tiny().state_dict())
    other = create_model("mvit_tiny", pool_kernel=(3, 3, 3), stage_depths=(2, 1, 2))  # block 1 still in stage 1
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.1\.attn\.qkv\.weight: expected shape \(48, 16\), "
                                                      r"got \(96, 32\)"):
        load_mvit(foreign, other)
    with pytest.raises(CheckpointError, match="not an MViT checkpoint"):
        load_mvit({"encoder.weight": torch.zeros(1)}, create_model("mvit_tiny"))
    converted = convert_mvit_checkpoint(foreign, "mem", None, {"kv_stride": (1, 4, 4), "num_classes": 3})
    with pytest.raises(CheckpointMismatchError, match=r"head\.weight: expected shape \(3, 64\), got \(10, 64\)"):
        from_converted(converted)


def test_unsupported_mvits_are_named(tmp_path):
    sd = to_pyslowfast(tiny().state_dict(), fused=True)
    data = dict(TINY_DATA)
    for mvit, match in [(dict(TINY, REL_POS_SPATIAL=True), "MVIT.REL_POS_SPATIAL"),
                        (dict(TINY, POOL_FIRST=True), "MVIT.POOL_FIRST"),
                        (dict(TINY, MODE="conv_unshared"), "MVIT.MODE"),
                        (dict(TINY, DIM_MUL=[[2, 2.0], [3, 2.0]]), "DIM_MUL layers"),
                        (dict(TINY, PATCH_PADDING=[2, 4, 4]), "patch embedding"),
                        (dict(TINY, POOL_KV_STRIDE_ADAPTIVE=None, POOL_KV_STRIDE=[[0, 1, 4, 4]]), "POOL_KV_STRIDE")]:
        with pytest.raises(CheckpointError, match=match):
            convert_mvit_checkpoint({"model_state": sd, "cfg": slowfast_cfg(mvit, data, 10)}, "x.pyth")
    with pytest.raises(CheckpointError, match="MODEL.ARCH is 'slowfast'"):
        convert_mvit_checkpoint({"model_state": sd, "cfg": slowfast_cfg(TINY, data, 10, MODEL={"ARCH": "slowfast"})},
                                "x.pyth")
    v2 = dict(sd, **{"blocks.0.attn.rel_pos_h": torch.zeros(3, 16)})
    with pytest.raises(CheckpointError, match="MViT v2 checkpoint"):
        convert_mvit_checkpoint({"model_state": v2}, "x.pyth")
    partial = {k: v for k, v in sd.items() if not k.startswith("blocks.2.mlp.")}
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(2\): blocks\.2\.mlp\.fc1\.weight, "
                                                      r"blocks\.2\.mlp\.fc2\.weight"):
        convert_mvit_checkpoint({"model_state": partial}, "x.pyth")
    with pytest.raises(CheckpointError, match="no conv-pooling weights to read the heads from"):
        convert_mvit_checkpoint(to_pyslowfast(tiny(pool_mode="max").state_dict(), True), "x.pyth")


def test_floored_grids_load_and_run(tmp_path):
    """A checkpoint of a model whose token grid the strides do not divide (10² tokens, K/V stride 4): built from
    its cfg at 40², it runs with the floored grids."""
    source = tiny(img_size=40)
    path = tmp_path / "c.pyth"
    torch.save({"model_state": to_pyslowfast(source.state_dict(), fused=True),
                "cfg": slowfast_cfg(TINY, dict(TINY_DATA, TRAIN_CROP_SIZE=40, TEST_CROP_SIZE=40), 10)}, path)
    target = load_mvit(path)
    assert target.cfg.img_size == 40
    x = clip(s=40)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
