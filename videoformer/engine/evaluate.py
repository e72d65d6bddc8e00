"""Multi-view testing (ViViT §4.1, TimeSformer §4.3): K temporal clips × S spatial crops per video, softmax
scores averaged over the views; top-1 / top-5 / mean class accuracy and the confusion matrix. With several
heads (Epic-Kitchens verb + noun) the action is right when every head is (ViViT §4.1). An evaluation that scores
no video, or whose model gives NaN / inf scores, is an :class:`EvaluationError`, never a metric."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import VideoDataset
from ..data.batch import Batch
from .config import Config, ConfigError
from .data import EvalItems
from .interrupt import ignore_interrupts


class EvaluationError(ValueError):
    """No video could be scored (all unreadable), or the model's scores are not finite; names the files."""


def autocast(device: torch.device, precision: str):
    """bf16 / fp16 autocast on the device, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def eval_precision(config: Config, device: torch.device) -> str:
    """The precision evaluation and predict run in: ``eval.precision``, else ``train.precision``; fp16 needs a
    GPU (as in training)."""
    precision = config.eval.precision or config.train.precision
    if precision == "fp16" and device.type != "cuda":
        key = "eval.precision" if config.eval.precision else "train.precision"
        raise ConfigError(f"{key}=fp16 needs a GPU; use bf16 on CPU (--precision bf16)")
    return precision


def split_heads(logits: torch.Tensor, heads: Sequence[int]) -> list[torch.Tensor]:
    return list(logits.split(list(heads), dim=-1))


@dataclass
class HeadMetrics:
    top1: float
    top5: float
    mean_class_acc: float
    per_class: list[float]
    confusion: list[list[int]]


def head_metrics(scores: torch.Tensor, labels: torch.Tensor) -> HeadMetrics:
    """Accuracies of ``(N, C)`` scores against ``(N,)`` labels; classes absent from the labels are left out of
    the mean class accuracy (their per-class entry is NaN)."""
    n, c = scores.shape
    top = scores.topk(min(5, c), dim=1).indices
    hit5 = (top == labels[:, None]).any(1)
    pred = top[:, 0]
    confusion = torch.zeros(c, c, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    support = confusion.sum(1)
    per_class = confusion.diag().double() / support.clamp_min(1)
    per_class[support == 0] = float("nan")
    present = support > 0
    return HeadMetrics(top1=float((pred == labels).double().mean()) if n else 0.0,
                       top5=float(hit5.double().mean()) if n else 0.0,
                       mean_class_acc=float(per_class[present].mean()) if present.any() else 0.0,
                       per_class=per_class.tolist(), confusion=confusion.tolist())


@dataclass
class EvalResult:
    """Scores and metrics of one evaluation; ``top1`` is the action accuracy when there are several heads."""

    top1: float
    top5: float
    mean_class_acc: float
    num_videos: int
    skipped: int
    views: str
    heads: list[HeadMetrics]
    action_acc: float | None = None
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The ``--json`` object: scalar metrics, per-class accuracies and the confusion matrix."""
        out: dict[str, Any] = dict(top1=self.top1, top5=self.top5, mean_class_acc=self.mean_class_acc,
                                   num_videos=self.num_videos, skipped=self.skipped, views=self.views)
        if self.action_acc is not None:
            out["action_acc"] = self.action_acc
            out["heads"] = [dict(top1=h.top1, top5=h.top5, mean_class_acc=h.mean_class_acc) for h in self.heads]
        per_class = [[None if math.isnan(a) else a for a in h.per_class] for h in self.heads]  # JSON has no NaN
        out["per_class"] = per_class if len(self.heads) > 1 else per_class[0]
        out["confusion"] = [h.confusion for h in self.heads] if len(self.heads) > 1 else self.heads[0].confusion
        out["errors"] = self.errors
        return out


@torch.no_grad()
def predict_scores(model: nn.Module, batch: Batch, heads: Sequence[int], device: torch.device,
                   precision: str = "fp32", shuffle: torch.Generator | None = None) -> list[torch.Tensor]:
    """A test batch of V views per sample -> per head ``(B, classes)`` softmax scores averaged over the views;
    ``shuffle`` permutes the frames of every view first (shared by the modalities of a view)."""
    x = batch.flat_views().to(device, non_blocking=True)
    x = x.shuffled(shuffle) if shuffle is not None else x
    with autocast(device, precision):
        logits = model(model.input_spec.select(x.inputs)).float()
    return [h.softmax(-1).unflatten(0, (len(batch), batch.views)).mean(1).cpu() for h in split_heads(logits, heads)]


def check_scores(scores: Sequence[torch.Tensor], paths: Sequence[str], source: str) -> None:
    """Raise :class:`EvaluationError` naming the videos (and the model ``source``) whose scores hold NaN / inf."""
    bad = ~torch.stack([torch.isfinite(s).all(-1) for s in scores]).all(0)
    if bad.any():
        names = [paths[i] for i in bad.nonzero().flatten().tolist()]
        raise EvaluationError(f"{source} gives NaN / inf scores for {len(names)} video(s): {', '.join(names[:3])}"
                              f"{' ...' if len(names) > 3 else ''} (overflowing or corrupted weights; with bf16 / "
                              "fp16 try train.precision=fp32)")


def evaluate(model: nn.Module, dataset: VideoDataset, heads: Sequence[int], num_clips: int = 1, num_crops: int = 1,
             batch_size: int = 8, device: torch.device = torch.device("cpu"), precision: str = "fp32",
             shuffle_seed: int | None = None, num_workers: int = 0, progress: bool = False,
             source: str = "the model") -> EvalResult:
    """Evaluate ``model`` on a test-mode ``dataset`` built with ``num_clips`` clips and ``num_crops`` crops;
    ``shuffle_seed`` permutes the frames of every view (MViT Table 9 frame-shuffle test). Raises
    :class:`EvaluationError` when no video is readable or ``model`` (named ``source``) scores one NaN / inf."""
    was_training = model.training
    model.eval()
    items = EvalItems(dataset, num_clips * num_crops)
    loader = DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=items.collate, worker_init_fn=ignore_interrupts)
    gen = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    scores: list[list[torch.Tensor]] = [[] for _ in heads]
    labels: list[torch.Tensor] = []
    errors: list[str] = []
    try:
        for batch, bad in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
            errors += [msg for _, msg in bad]
            if batch is None:
                continue
            batch_scores = predict_scores(model, batch, heads, device, precision, gen)
            check_scores(batch_scores, [dataset.records[i].path for i in batch.index], source)
            for k, s in enumerate(batch_scores):
                scores[k].append(s)
            labels.append(batch.labels.reshape(len(batch), -1))
    finally:
        model.train(was_training)
    if not labels:
        raise EvaluationError(f"no video could be scored: all {len(dataset)} are unreadable (first: "
                              f"{'; '.join(errors[:3])})")
    lab = torch.cat(labels)
    per_head = [head_metrics(torch.cat(s), lab[:, k]) for k, s in enumerate(scores)]
    action = None
    if len(heads) > 1:
        right = torch.stack([torch.cat(s).argmax(1) == lab[:, k] for k, s in enumerate(scores)]).all(0)
        action = float(right.double().mean())
    first = per_head[0]
    return EvalResult(top1=action if action is not None else first.top1, top5=first.top5,
                      mean_class_acc=first.mean_class_acc, num_videos=len(lab), skipped=len(errors),
                      views=f"{num_clips}x{num_crops}", heads=per_head, action_acc=action, errors=errors)
