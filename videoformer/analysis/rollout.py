"""Attention rollout (Abnar & Zuidema, 2020) from the clip representation back to the input tokens
(MM-ViT §4.4), for every model whose blocks are :class:`~videoformer.layers.Block` s of grid attention.

Each attention sublayer with its residual connection mixes tokens by ``Â = ½ (A + I)``, ``A`` the attention
weights averaged over heads (or their maximum, ``head_fusion="max"``); MLPs and norms act per token. The
rollout is the row of ``Â_L … Â_1`` of the pooled token(s). Factorised attention composes per-axis maps:
each sublayer's ``A`` is block-diagonal over its :class:`~videoformer.layers.Grouping` 's sequences, so the
row vector is pushed back one sublayer at a time on the grouped grid and never builds an ``N × N`` matrix.

- Prefix tokens replicated into every sequence (``prefix="replicate"``) average their outputs over the
  sequences, so their row is ``1/G`` of each sequence's; excluded prefix tokens keep their weight.
- Head groups attending over different axes (ViViT model 4) each contribute their share of the heads.
- Masked keys (co-attention: the own modality) have zero weight; shift-merge (a ``"shift_merge"`` spec,
  Eq. 17-20, no attention weights) moves ``1/|S|`` of the channels of each token to every modality at the
  same position and keeps its own value, so it mixes by ``½ (1/|S| + I)``. Window convolutions (MM-ViT IV's
  post-op, identity at initialisation) are not part of the rollout. Specs that move tokens across frames
  outside the attention weights (MSCA's q/k/v hook, TokenShift's block hook) have no rollout here.
- Pooling: the CLS token (TimeSformer, ViViT 1, MM-ViT), the mean of the per-frame CLS tokens or patch
  tokens (frame-wise ViT), the mean of all tokens (ViViT 3, 4); ViViT model 2 rolls back through the temporal
  encoder to frame weights, then through the spatial encoder of each frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import torch
from einops import rearrange
from torch import nn

from ..layers import AxisAttention, Block, Grid, Grouping, ShiftMerge, record_attention

HeadFusion = Literal["mean", "max"]
_SUPPORTED = (AxisAttention, ShiftMerge)


class RolloutError(ValueError):
    """The model has no attention rollout here (pooling attention, cross-frame attention ...)."""


@dataclass
class _Record:
    """One attention sublayer call: the module, the grid it saw and the softmax weights of each attend call."""

    name: str
    module: nn.Module
    grid: Grid
    rows: int  # token sequences in the batch (B, or B·T with frames folded into the batch)
    weights: list[torch.Tensor] = field(default_factory=list)


def _sublayers(model: nn.Module) -> dict[str, nn.Module]:
    lists = [n for n in ("blocks", "temporal_blocks") if isinstance(getattr(model, n, None), nn.ModuleList)]
    if not lists:
        raise RolloutError(f"{type(model).__name__} has no transformer blocks")
    out = {}
    for list_name in lists:
        for i, block in enumerate(getattr(model, list_name)):
            if (type(block) is not Block or block.pre is not None
                    or any(type(a) not in _SUPPORTED or a.spec.qkv_hook is not None for a in block.attns)):
                raise RolloutError(f"{type(model).__name__}.{list_name}.{i} ({type(block).__name__}: "
                                   f"{[type(a).__name__ for a in getattr(block, 'attns', [])]}) is not grid "
                                   f"attention; rollout supports {[c.__name__ for c in _SUPPORTED]} without "
                                   "frame shifts")
            out.update({f"{list_name}.{i}.attns.{j}": a for j, a in enumerate(block.attns)})
    return out


def _record(model: nn.Module, inputs: Any) -> list[_Record]:
    """Run ``model`` once (eval, no grad) and record every attention sublayer's grid and weights."""
    records: list[_Record] = []

    def hook(name: str):
        def pre(module: nn.Module, args: tuple) -> None:
            records.append(_Record(name, module, args[1], args[0].shape[0]))
        return pre

    sublayers = _sublayers(model)
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in sublayers.items()]
    training = model.training
    try:
        model.eval()
        with torch.no_grad(), record_attention(lambda w: records[-1].weights.append(w), *sublayers.values()):
            model(dict(inputs) if isinstance(inputs, Mapping) else inputs)
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    return records


def _fuse(w: torch.Tensor, head_fusion: HeadFusion) -> torch.Tensor:
    """``(G, heads, Lq, Lk)`` -> ``(G, Lq, Lk)``."""
    if head_fusion == "mean":
        return w.mean(dim=1)
    if head_fusion == "max":
        w = w.amax(dim=1)
        return w / w.sum(dim=-1, keepdim=True)
    raise ValueError(f"head_fusion must be 'mean' or 'max', got {head_fusion!r}")


def _push(r: torch.Tensor, grid: Grid, grouping: Grouping, A: torch.Tensor, replicate: bool) -> torch.Tensor:
    """``r·A`` for one head group: ``r`` ``(B, P + N)`` weights on the sublayer's outputs, ``A``
    ``(B*G, L, L)`` its attention over each sequence (with the ``P`` prefix tokens first if replicated)."""
    B, P = r.shape[0], grid.prefix
    seq = grouping.group(r[:, P:, None], grid)[..., 0]  # (B*G, L)
    G = seq.shape[0] // B
    if replicate and P:
        seq = torch.cat([r[:, :P].repeat_interleave(G, dim=0) / G, seq], dim=1)
    out = torch.einsum("gi,gij->gj", seq, A.to(r.dtype))
    k = P if replicate else 0
    body = grouping.ungroup(out[:, k:, None], grid)[..., 0]
    pre = rearrange(out[:, :P], "(b g) p -> b g p", b=B).sum(dim=1) if replicate and P else r[:, :P]
    return torch.cat([pre, body], dim=1)


def _mix(r: torch.Tensor, rec: _Record, head_fusion: HeadFusion) -> torch.Tensor:
    """``r·A`` for one sublayer (every head group, heads split evenly among them)."""
    spec, grid = rec.module.spec, rec.grid
    if spec.mixer == "shift_merge":
        m = grid.m
        A = (torch.full((m, m), 1.0 / m) + torch.eye(m)) / 2
        g = Grouping(("m",))
        return _push(r, grid, g, A.expand(g.num_groups(grid) * r.shape[0], m, m), replicate=False)
    replicate = spec.prefix == "replicate"
    if not replicate:
        grid = grid.replace(prefix=0)
        pre, r = r[:, : rec.grid.prefix], r[:, rec.grid.prefix :]
    outs = [_push(r, grid, g, _fuse(w, head_fusion), replicate) for g, w in zip(spec.groupings, rec.weights)]
    out = torch.stack(outs).mean(dim=0)
    return out if replicate else torch.cat([pre, out], dim=1)


def _roll_back(r: torch.Tensor, records: list[_Record], head_fusion: HeadFusion) -> torch.Tensor:
    """Push the row ``r`` back through the sublayers, last first: ``r <- ½ (r·A + r)``."""
    for rec in reversed(records):
        r = 0.5 * _mix(r, rec, head_fusion) + 0.5 * r
    return r


def _start(grid: Grid, rows: int, per_row: torch.Tensor) -> torch.Tensor:
    """The pooled representation's weights on the last tokens: CLS (or mean of patches) of each row."""
    r = per_row.new_zeros(rows, grid.prefix + grid.numel)
    if grid.prefix:
        r[:, 0] = per_row
    else:
        r[:, :] = per_row[:, None] / grid.numel
    return r


def attention_rollout(model: nn.Module, inputs: Any, head_fusion: HeadFusion = "mean") -> dict[str, torch.Tensor]:
    """Rollout of the pooled representation onto the input tokens of one batch ``inputs`` (a clip, or the
    modality mapping of MM-ViT).

    Returns ``{modality: map}`` with maps ``(B, T, h, w)`` on the token grid (T: token frames; MM-ViT's
    ``audio`` map ``(B, T)`` sums its ``h·w`` replicas); RGB models return ``{"video": ...}``. The maps of all
    modalities sum to the weight left on input tokens (the rest stays on the learned CLS token).
    """
    records = _record(model, inputs)
    main = [r for r in records if r.name.startswith("blocks.")]
    temporal = [r for r in records if r.name.startswith("temporal_blocks.")]
    if not main:
        raise RolloutError(f"{type(model).__name__} ran no attention sublayer")
    batch = next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs
    B, grid, rows = batch.shape[0], main[0].grid, main[0].rows
    if temporal:  # ViViT model 2: the temporal encoder's CLS over the frame representations h_i first
        tgrid = temporal[0].grid
        r = _roll_back(_start(tgrid, B, torch.ones(B)), temporal, head_fusion)
        per_row = rearrange(r[:, tgrid.prefix :], "b t -> (b t)")
    else:  # one row per clip, or the mean over the frames folded into the batch
        per_row = torch.full((rows,), B / rows)
    r = _roll_back(_start(grid, rows, per_row), main, head_fusion)[:, grid.prefix :]
    if rows != B:  # frames folded into the batch (frame-wise ViT, ViViT model 2's spatial encoder)
        return {"video": rearrange(r, "(b t) (h w) -> b t h w", b=B, h=grid.h)}
    maps = rearrange(r, "b (m t h w) -> m b t h w", **grid.sizes)
    names = getattr(model, "modalities", None) or ("video",)
    return {n: (maps[i].sum(dim=(-2, -1)) if n == "audio" else maps[i]) for i, n in enumerate(names)}


def _display(x: torch.Tensor) -> torch.Tensor:
    """One modality's frames ``(T, C, H, W)`` -> RGB ``(T, H, W, 3)`` in [0, 1]: 3 channels min-max scaled
    per frame; 2 channels (motion vectors) as flow colours, hue = direction, value = magnitude."""
    x = x.float()
    if x.shape[1] == 2:
        from matplotlib.colors import hsv_to_rgb

        dx, dy = x[:, 0], x[:, 1]
        mag = torch.sqrt(dx**2 + dy**2)
        hue = (torch.atan2(dy, dx) / (2 * torch.pi)) % 1.0
        val = mag / mag.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
        hsv = torch.stack([hue, torch.ones_like(hue), val], dim=-1)
        return torch.from_numpy(hsv_to_rgb(hsv.numpy()))
    if x.shape[1] != 3:
        raise ValueError(f"cannot display frames with {x.shape[1]} channels (expected 2 or 3)")
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-8)).permute(0, 2, 3, 1)


def save_overlays(maps: Mapping[str, torch.Tensor], frames: Mapping[str, torch.Tensor], out_dir: str,
                  name: str = "rollout", alpha: float = 0.5) -> list[str]:
    """Write one PNG per clip: a row per visual modality with the rollout map (upsampled, ``jet``, scaled to
    its own min-max per modality and clip) over its frames, and MM-ViT's audio map as a strip.

    ``frames``: ``{modality: (B, T, C, H, W)}`` as fed to the model (RGB models: ``{"video": clip.transpose(1,
    2)}``). Returns the paths written.
    """
    from pathlib import Path

    import torch.nn.functional as F
    from matplotlib.figure import Figure

    visual = [m for m in maps if m != "audio"]
    missing = [m for m in visual if m not in frames]
    if missing:
        raise ValueError(f"no frames given for the maps of {missing} (frames: {sorted(frames)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    B, T = maps[visual[0]].shape[:2]
    paths = []
    for b in range(B):
        rows = len(visual) + int("audio" in maps)
        fig = Figure(figsize=(1.6 * T + 0.6, 1.7 * rows))
        axes = fig.subplots(rows, T, squeeze=False)
        for i, m in enumerate(visual):
            imgs = frames[m][b]  # (T_in, C, H, W)
            step = imgs.shape[0] // T  # token frames of a tubelet show their first frame
            rgb = _display(imgs[::step][:T])
            heat = F.interpolate(maps[m][b][:, None].float(), size=rgb.shape[1:3], mode="bilinear",
                                 align_corners=False)[:, 0]
            lo, hi = float(heat.amin()), float(heat.amax())  # colour scale per modality and clip
            for t in range(T):
                ax = axes[i, t]
                ax.imshow(rgb[t].numpy())
                ax.imshow(heat[t].numpy(), cmap="jet", alpha=alpha, vmin=lo, vmax=hi)
                ax.set_xticks([])
                ax.set_yticks([])
                if t == 0:
                    ax.set_ylabel(m)
                if i == 0:
                    ax.set_title(f"t={t}", fontsize=8)
        if "audio" in maps:
            gs = axes[-1, 0].get_gridspec()
            for ax in axes[-1]:
                ax.remove()
            ax = fig.add_subplot(gs[-1, :])
            ax.imshow(maps["audio"][b][None].numpy(), cmap="jet", aspect="auto")
            ax.set_yticks([])
            ax.set_xticks(range(T))
            ax.set_ylabel("audio")
        fig.suptitle(f"{name}: attention rollout, clip {b}", fontsize=9)
        path = out / f"{name}_{b}.png"
        fig.savefig(path, dpi=80, bbox_inches="tight")
        paths.append(str(path))
    return paths


def video_inputs(model: nn.Module, path: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """Test-time inputs of one video file for ``model`` (batch of 1) and the frames to draw them on.

    MM-ViT: the compressed-domain clip (:func:`~videoformer.data.compressed.extract_compressed`, TSN segment
    centres, :class:`~videoformer.data.transforms.CompressedTransform` centre crop) plus audio embeddings;
    RGB models: uniformly sampled frames, short-side scaled, centre-cropped and normalised.
    """
    import numpy as np

    from ..data.sampling import uniform_indices
    from ..data.transforms import CompressedTransform, VideoTransform
    from ..data.video import probe, read_clip

    cfg = model.cfg
    if hasattr(model, "modalities"):
        from ..data.compressed import extract_compressed

        clip = extract_compressed(path, num_segments=cfg.num_frames, audio="audio" in model.modalities)
        tensors = [torch.from_numpy(a) for a in (clip.iframe, clip.mv, clip.residual)]
        sample = CompressedTransform(size=cfg.img_size, train=False)(*tensors)
        sample["audio"] = torch.from_numpy(clip.audio)
        inputs = {m: sample[m][None] for m in model.modalities}
        return inputs, inputs
    idx = uniform_indices(probe(path).num_frames, cfg.num_frames, train=False, rng=np.random.default_rng(0))
    frames = torch.from_numpy(read_clip(path, idx)).permute(3, 0, 1, 2)  # (3, T, H, W)
    x = VideoTransform(size=cfg.img_size, train=False)(frames)[None]
    return x, {"video": x.transpose(1, 2)}


def rollout_video(model_name: str, video: str, out_dir: str, weights: str | None = None,
                  head_fusion: HeadFusion = "mean", **config: Any) -> list[str]:
    """``videoformer rollout``: build ``model_name`` (``config`` overrides), load a state-dict file
    ``weights`` if given (else random initialisation), roll out its attention on ``video`` and write the
    PNG overlays to ``out_dir``; returns their paths."""
    from pathlib import Path

    from ..models import create_model
    from ..weights.common import CheckpointError, load_checked, read_file

    model = create_model(model_name, **{k: v for k, v in config.items() if v is not None})
    if weights is not None:
        state = read_file(weights)
        if isinstance(state, dict) and isinstance(state.get("model"), dict) and "config" in state:
            state = state["model"]  # a training checkpoint (checkpoints/last.pt, best.pt)
        if not isinstance(state, dict):
            raise CheckpointError(f"{weights} holds a {type(state).__name__}, not a state dict")
        load_checked(model, state, str(weights))
    inputs, frames = video_inputs(model, video)
    maps = attention_rollout(model, inputs, head_fusion)
    return save_overlays(maps, frames, out_dir, f"{model_name}_{Path(video).stem}")
