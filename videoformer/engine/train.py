"""The training loop: ``train(config)`` builds data, model and optimiser from a :class:`Config`, checks all of
them before the first step, resumes from ``<output_dir>/checkpoints/last.pt`` when it exists, and writes
``config.yaml``, ``metrics.jsonl`` and the ``last`` / ``best`` checkpoints.

Determinism: the data order of epoch e is a permutation seeded by (seed, e); augmentation draws from
generators seeded by (seed, e, index); mixup by (seed, e, step, micro-batch, rank). A checkpoint is taken at
optimiser-step boundaries with the global RNG states and the running epoch sums, so a resumed run replays
exactly the steps an uninterrupted one takes. With DDP, ``train.batch_size`` is the global micro-batch, split
evenly over the processes; gradients are averaged, which equals one process with the same global batch.

Nothing is lost and nothing bad is kept: a non-finite loss, non-finite gradients (fp32 / bf16; fp16's scaler
skips those steps) or non-finite weights stop the run before anything is written (:class:`TrainingDiverged`),
so a checkpoint never holds NaN / inf; ``best.pt`` is written before ``last.pt`` records its score, so a kill
between the two is replayed on resume; unreadable training videos are counted over all DataLoader workers and
stop the run beyond ``data.max_fail_fraction`` (:class:`~videoformer.data.DatasetFailure`); a validation pass
that scores no video is an error (:class:`~videoformer.engine.evaluate.EvaluationError`), never a best epoch.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import DatasetFailure, Mixup
from ..data.batch import Batch
from ..fileio import atomic_write, remove_stale_temp
from ..weights.common import NonFiniteWeightsError, load_checked, nonfinite
from .checkpoint import checkpoint_path, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, ConfigError
from .data import CountingDataset, check_labels, collate_counted, head_sizes, read_split, video_dataset
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from .evaluate import EvaluationError, autocast, eval_precision, evaluate, split_heads
from .interrupt import StopRequest, TrainingStopped, ignore_interrupts
from .model import freeze, pretrained_model
from .report import TensorBoard, plot_confusion, plot_curves
from .schedules import LRSchedule
from .threads import set_threads


class TrainingDiverged(RuntimeError):
    """The loss, the gradients or the weights became NaN or infinite; the run stops before writing anything and
    keeps its last good checkpoint."""


@dataclass
class Sums:
    """Running sums of the current epoch (summed over processes)."""

    loss: float = 0.0
    correct: float = 0.0
    samples: float = 0.0
    skipped: float = 0.0

    def add(self, values: torch.Tensor) -> None:
        self.loss += float(values[0])
        self.correct += float(values[1])
        self.samples += float(values[2])
        self.skipped += float(values[3])


@dataclass
class State:
    """Where the run is: ``step`` optimiser steps done in ``epoch``; the history of epoch records."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best_top1: float = -1.0
    sums: Sums = field(default_factory=Sums)
    history: list[dict[str, Any]] = field(default_factory=list)
    tried: int = 0  # training samples tried since the run started (readable or not, over all processes)
    unreadable: int = 0


@dataclass
class Setup:
    """Everything built and checked before training starts."""

    model: nn.Module
    classes: Any
    heads: list[int]
    train_set: Any
    val_set: Any


def prepare(cfg: Config, log: bool = True) -> Setup:
    """Read annotations, build datasets and the model, load pretrained weights: every configuration error
    (paths, labels, model names and sizes, checkpoints, frozen names) is raised here."""
    train_ann = read_split(cfg.data, "train")
    classes = train_ann.classes
    val_ann = read_split(cfg.data, "val", classes if isinstance(classes, list) else None)
    if cfg.data.format == "folder" and val_ann.classes != classes:
        raise ConfigError(f"data.val: class folders {val_ann.classes} differ from data.train's {classes}")
    heads = head_sizes(classes)
    check_labels(train_ann, heads, "train")
    check_labels(val_ann, heads, "val")
    if cfg.model.num_classes is not None and cfg.model.num_classes != sum(heads):
        raise ConfigError(f"model.num_classes={cfg.model.num_classes} but the dataset has {sum(heads)} classes")
    model = pretrained_model(cfg, sum(heads))  # model.pretrained loaded; cfg.model records what was built
    spec = model.input_spec
    if spec.compressed != (cfg.data.input == "compressed"):
        raise ConfigError(f"data.input={cfg.data.input} but {cfg.model.name} takes {spec.describe()}")
    if spec.compressed and (cfg.train.mixup_alpha or cfg.train.cutmix_alpha):
        raise ConfigError("train.mixup_alpha / cutmix_alpha: not supported for compressed-domain input")
    if cfg.model.freeze:
        freeze(model, cfg.model.freeze)
    if cfg.model.grad_checkpointing:
        model.set_grad_checkpointing(True)
    train_set = video_dataset(cfg, train_ann.records, model, train=True)
    val_set = video_dataset(cfg, val_ann.records, model, train=False, num_clips=cfg.eval.num_clips,
                            num_crops=cfg.eval.num_crops)
    if log:
        print(f"data: {len(train_ann)} train / {len(val_ann)} val videos, {sum(heads)} classes "
              f"({train_ann.missing + val_ann.missing} listed videos missing)", file=sys.stderr)
    return Setup(model, classes, heads, train_set, val_set)


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW; no weight decay on biases, norms, positional embeddings and CLS tokens."""
    t = cfg.train
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    groups = [dict(params=decay, weight_decay=t.weight_decay, base_lr=t.lr),
              dict(params=no_decay, weight_decay=0.0, base_lr=t.lr)]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("model.freeze froze every parameter: nothing to train")
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)
    return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def mix(mixups: list[Mixup], batch: Batch, seed: list[int]) -> tuple[Batch, torch.Tensor]:
    """Mixup / CutMix of a batch, on the batch's device; with several heads every head's mixer replays the same
    draws (one generator state), so the inputs are mixed once and the soft targets of the heads are
    concatenated ``(B, sum C)``."""
    y = batch.labels.reshape(len(batch), -1)
    outs = [m(batch.inputs, y[:, k], np.random.default_rng(seed)) for k, m in enumerate(mixups)]
    return replace(batch, inputs=outs[0][0]), torch.cat([target for _, target in outs], dim=1)


def loss_fn(logits: torch.Tensor, target: torch.Tensor, heads: list[int], smoothing: float) -> torch.Tensor:
    """Cross-entropy summed over heads; ``target`` (B,) / (B, heads) indices or (B, sum C) mixed soft targets."""
    if target.is_floating_point():
        return sum(-(t * h.float().log_softmax(-1)).sum(-1).mean()
                   for h, t in zip(split_heads(logits, heads), split_heads(target, heads)))
    target = target.reshape(len(target), -1)
    return sum(F.cross_entropy(h.float(), target[:, k], label_smoothing=smoothing)
               for k, h in enumerate(split_heads(logits, heads)))


def correct_count(logits: torch.Tensor, labels: torch.Tensor, heads: list[int]) -> int:
    labels = labels.reshape(len(labels), -1)
    right = torch.stack([h.argmax(-1) == labels[:, k] for k, h in enumerate(split_heads(logits, heads))]).all(0)
    return int(right.sum())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """One run: ``Trainer(cfg).fit()`` returns the epoch history."""

    def __init__(self, cfg: Config) -> None:
        self.cfg, t = cfg, cfg.train
        self.dist: DistInfo = init_distributed(t.device)
        set_threads(t.threads, cfg.data.num_workers, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        if t.batch_size % self.dist.world_size:
            raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by {self.dist.world_size} processes")
        if t.precision == "fp16" and self.dist.device.type != "cuda":
            raise ConfigError("train.precision=fp16 needs a GPU; use bf16 on CPU")
        eval_precision(cfg, self.dist.device)  # an fp16 eval.precision fails here, not after the first epoch
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(t.seed)
        self.setup = prepare(cfg, log=self.dist.is_main)
        self.run_dir = Path(cfg.output_dir)
        self.steps_per_epoch = len(self.setup.train_set) // (t.batch_size * t.accum_steps)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"train.batch_size * accum_steps = {t.batch_size * t.accum_steps} exceeds the "
                              f"{len(self.setup.train_set)} training videos")
        self.model = self.setup.model.to(self.dist.device)
        self.spec = self.model.input_spec
        self.optimizer = build_optimizer(self.model, cfg)
        self.schedule = LRSchedule(t.schedule, self.steps_per_epoch, t.epochs, t.warmup_epochs, t.min_lr / t.lr,
                                   list(t.milestones), t.gamma, t.plateau_patience)
        self.scaler = torch.amp.GradScaler("cuda", enabled=t.precision == "fp16")
        self.mixup: list[Mixup] = []  # one per head, drawing the same lambda and box
        if t.mixup_alpha or t.cutmix_alpha:
            self.mixup = [Mixup(n, t.mixup_alpha, t.cutmix_alpha, t.mixup_prob, t.mixup_switch_prob, t.label_smoothing)
                          for n in self.setup.heads]
        self.state = State()
        self.stop = StopRequest()
        self.resumed_from: Path | None = None
        self.steps_taken = 0  # optimiser steps taken by this process (since start or resume)
        self.unreadable_examples: list[str] = []
        self.confusions: list[list[list[int]]] = []
        self.tensorboard = TensorBoard(self.run_dir) if self.dist.is_main and t.reports else None
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.dist.device] if self.dist.device.type == "cuda"
                                            else None) if self.dist.distributed else self.model)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _checkpoint(self) -> dict[str, Any]:
        s = self.state
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    schedule=self.schedule.state_dict(), scaler=self.scaler.state_dict(), rng=rng_state(),
                    progress=dict(epoch=s.epoch, step=s.step, global_step=s.global_step, best_top1=s.best_top1,
                                  tried=s.tried, unreadable=s.unreadable),
                    sums=vars(s.sums).copy(), history=list(s.history), config=self.cfg.to_dict(),
                    classes=self.setup.classes, heads=self.setup.heads)

    def check_finite(self) -> None:
        """Raise :class:`TrainingDiverged` if a weight or an optimiser state holds NaN / inf (every process holds
        the same, so all of them stop)."""
        bad = nonfinite({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()["state"]})
        if bad:
            raise self.diverged(f"{len(bad)} tensor(s) hold NaN / inf ({', '.join(bad[:3])}) after step "
                                f"{self.state.global_step}")

    def save(self, best: bool = False) -> None:
        """Write ``best.pt`` (when ``best``), then ``last.pt``, then ``metrics.jsonl``: ``last.pt`` records the
        best score only once ``best.pt`` holds its weights, so a kill in between replays the epoch on resume."""
        self.check_finite()
        if self.dist.is_main:
            state = self._checkpoint()
            if best:
                save_checkpoint(checkpoint_path(self.run_dir, "best"), state)
            save_checkpoint(checkpoint_path(self.run_dir, "last"), state)
            lines = "".join(json.dumps(r) + "\n" for r in self.state.history)
            atomic_write(self.run_dir / "metrics.jsonl", lambda f: f.write(lines.encode()))
        barrier(self.dist)

    def resume(self) -> bool:
        """Load ``last.pt`` if the run directory has one; returns whether it did."""
        path = checkpoint_path(self.run_dir, "last")
        if not path.is_file():
            return False
        try:
            ckpt = load_checkpoint(path)
        except NonFiniteWeightsError as err:  # never "diverged": the file is bad, not the learning rate
            raise NonFiniteWeightsError(err.source, err.names, err.counts, "cannot resume from it: move it away to "
                                        "restart the run from its beginning (or set another output_dir)") from None
        saved, now = ({k: v for k, v in c["model"].items() if k != "pretrained"}
                      for c in (ckpt["config"], self.cfg.to_dict()))
        if saved != now:
            raise ConfigError(f"{path} was written for model settings {saved}, not {now}; use another output_dir")
        load_checked(self.model, ckpt["model"], str(path))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group in self.optimizer.param_groups:  # the config's lr wins over the saved one
            group["base_lr"] = self.cfg.train.lr
        self.schedule.load_state_dict(ckpt["schedule"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        p = ckpt["progress"]
        self.state = State(p["epoch"], p["step"], p["global_step"], p["best_top1"], Sums(**ckpt["sums"]),
                           list(ckpt["history"]), p.get("tried", 0), p.get("unreadable", 0))
        self.resumed_from = path
        if self.dist.is_main and p["epoch"] < self.cfg.train.epochs:
            where = f"epoch {p['epoch'] + 1}, step {p['step'] + 1} of {self.steps_per_epoch}" if p["step"] else \
                f"epoch {p['epoch'] + 1}"
            print(f"resumed from {path}: {p['epoch']} of {self.cfg.train.epochs} epochs done, continuing at "
                  f"{where}", file=sys.stderr)
        return True

    def stop_if_requested(self) -> None:
        """After an optimiser step or an epoch: when Ctrl-C / SIGTERM reached any process, write ``last.pt``
        (all processes agree on the step) and raise :class:`TrainingStopped`."""
        flag = torch.tensor([1.0 if self.stop.requested else 0.0], dtype=torch.float64)
        if not float(all_reduce_sum(flag, self.dist)[0]):
            return
        s = self.state
        if s.step:  # mid-epoch; an epoch's end has already been written by end_epoch
            self.save()
        where = f"epoch {s.epoch + 1}, step {s.step} of {self.steps_per_epoch}" if s.step else f"epoch {s.epoch}"
        raise TrainingStopped(f"stopped after {where}; {checkpoint_path(self.run_dir, 'last')} holds it: the same "
                              "command resumes the run")

    def complete_message(self) -> str:
        s, best = self.state, checkpoint_path(self.run_dir, "best")
        score = f", best validation top-1 {s.best_top1:.4f} ({best})" if s.best_top1 >= 0 and best.is_file() else ""
        return (f"{self.run_dir} is complete: {s.epoch} of {self.cfg.train.epochs} epochs trained{score}. Nothing to "
                f"do; raise train.epochs to train longer, or set another output_dir for a new run")

    # -- loop ----------------------------------------------------------------------------------------------------
    def _loader(self, epoch: int, start_step: int) -> DataLoader:
        t, d = self.cfg.train, self.dist
        order = epoch_order(len(self.setup.train_set), t.seed, epoch)
        per_rank = t.batch_size // d.world_size
        mine = []
        for mb in range(start_step * t.accum_steps, self.steps_per_epoch * t.accum_steps):
            batch = order[mb * t.batch_size : (mb + 1) * t.batch_size]
            mine += batch[d.rank * per_rank : (d.rank + 1) * per_rank]
        self.setup.train_set.set_epoch(epoch)
        return DataLoader(CountingDataset(self.setup.train_set, mine), batch_size=per_rank, shuffle=False,
                          num_workers=self.cfg.data.num_workers, collate_fn=collate_counted,
                          generator=torch.Generator().manual_seed(t.seed), worker_init_fn=ignore_interrupts)

    def diverged(self, what: str) -> TrainingDiverged:
        """The error that stops a run whose loss, gradients or weights are not finite: names the checkpoint
        that stays, and never calls "good" a checkpoint that itself gives a non-finite first step."""
        if self.steps_taken == 0 and self.resumed_from is not None:
            return TrainingDiverged(f"{what}, on the first step after resuming from {self.resumed_from}: its "
                                    "weights are finite but do not train (a corrupted or diverged checkpoint); "
                                    "training stopped and nothing was written")
        last = checkpoint_path(self.run_dir, "last")
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
        return TrainingDiverged(f"{what} (lr {self.optimizer.param_groups[0]['lr']:.3g}); training stopped before "
                                f"writing anything and {kept} (lower train.lr, set train.clip_grad, or use "
                                "train.precision=fp32)")

    def _micro_step(self, batch: Batch, epoch: int, step: int, j: int, sync: bool) -> torch.Tensor:
        t, dev = self.cfg.train, self.dist.device
        batch = batch.to(dev, non_blocking=True)
        y = target = batch.labels
        if self.mixup:
            batch, target = mix(self.mixup, batch, [t.seed, epoch, step, j, self.dist.rank])
        ctx = contextlib.nullcontext() if sync or not self.dist.distributed else self.ddp.no_sync()
        with ctx:
            with autocast(dev, t.precision):
                logits = self.ddp(self.spec.select(batch.inputs))
            loss = loss_fn(logits, target, self.setup.heads, 0.0 if self.mixup else t.label_smoothing)
            bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], dtype=torch.float64)
            if float(all_reduce_sum(bad, self.dist)[0]):
                raise self.diverged(f"loss is {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}")
            self.scaler.scale(loss / t.accum_steps).backward()
        return torch.tensor([float(loss.detach()) * len(y), correct_count(logits.detach(), y, self.setup.heads),
                             len(y), 0.0], dtype=torch.float64)

    def _optimizer_step(self, epoch: int, step: int) -> None:
        """Clip (``train.clip_grad``: max norm; null or 0: off) and step. A non-finite gradient norm with a
        finite loss stops the run before the step (fp16: the scaler skips such steps and lowers its scale)."""
        t = self.cfg.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = None
        if t.clip_grad:
            self.scaler.unscale_(self.optimizer)
            norm = nn.utils.clip_grad_norm_(params, t.clip_grad)
        if t.precision != "fp16":
            if norm is None:
                norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            if not bool(torch.isfinite(norm)):  # gradients are the same on every process: all of them stop
                raise self.diverged(f"the gradient norm is {float(norm)} at epoch {epoch + 1}, step {step + 1} "
                                    "while the loss is finite")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_taken += 1

    def _count_unreadable(self, counts: torch.Tensor) -> None:
        """Add one step's samples and skipped videos (summed over processes) to the run's totals; stop when more
        than ``data.max_fail_fraction`` of the samples tried so far were unreadable (after the dataset's
        ``min_attempts``), the same whatever ``data.num_workers`` is."""
        s, frac = self.state, self.cfg.data.max_fail_fraction
        s.tried += int(counts[2] + counts[3])
        s.unreadable += int(counts[3])
        if s.tried >= self.setup.train_set.min_attempts and s.unreadable > frac * s.tried:
            raise DatasetFailure(f"{s.unreadable} of {s.tried} training samples tried were unreadable, more than "
                                 f"data.max_fail_fraction={frac:g}; training stopped (last checkpoint kept). "
                                 f"Examples: {'; '.join(self.unreadable_examples) or 'see the log'}")

    def _next_batch(self, it) -> tuple[Batch, torch.Tensor]:
        """The next micro-batch and its skipped-video counts; keeps a few errors of skipped videos for the
        messages."""
        batch, skipped, errors = next(it)
        self.unreadable_examples = (self.unreadable_examples + errors)[:3]
        if batch is None:  # every video of the split was tried for one item
            raise DatasetFailure(f"no training video is readable ({len(self.setup.train_set)} tried); e.g. "
                                 f"{'; '.join(self.unreadable_examples)}")
        return batch, skipped

    def train_epoch(self, epoch: int) -> None:
        t, s = self.cfg.train, self.state
        loader = self._loader(epoch, s.step)
        bar = tqdm(total=self.steps_per_epoch, initial=s.step, desc=f"epoch {epoch + 1}/{t.epochs}", unit="step",
                   disable=not (t.progress and self.dist.is_main), dynamic_ncols=True, leave=False)
        it = iter(loader)
        self.model.train()
        for step in range(s.step, self.steps_per_epoch):
            lr = self.schedule.apply(self.optimizer, s.global_step)
            counts = torch.zeros(4, dtype=torch.float64)
            for j in range(t.accum_steps):
                batch, skipped = self._next_batch(it)
                counts += self._micro_step(batch, epoch, step, j, sync=j == t.accum_steps - 1)
                counts[3] += float(skipped.sum())
            self._optimizer_step(epoch, step)
            counts = all_reduce_sum(counts, self.dist)
            self._count_unreadable(counts)
            s.sums.add(counts)
            s.step, s.global_step = step + 1, s.global_step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{s.sums.loss / s.sums.samples:.4f}", lr=f"{lr:.3g}",
                            skipped=int(s.sums.skipped))
            if s.step < self.steps_per_epoch:
                if t.checkpoint_every and s.step % t.checkpoint_every == 0:
                    self.save()
                self.stop_if_requested()
        bar.close()

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        t, s = self.cfg.train, self.state
        record: dict[str, Any] = dict(epoch=epoch + 1, step=s.global_step, lr=self.optimizer.param_groups[0]["lr"],
                                      train_loss=s.sums.loss / s.sums.samples, train_acc=s.sums.correct / s.sums.samples,
                                      skipped=int(s.sums.skipped))
        if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
            self.check_finite()
            top1 = torch.zeros(2, dtype=torch.float64)  # top-1, failed
            failure: EvaluationError | None = None
            if self.dist.is_main:
                try:
                    res = evaluate(self.model, self.setup.val_set, self.setup.heads, self.cfg.eval.num_clips,
                                   self.cfg.eval.num_crops, self.cfg.eval.batch_size, self.dist.device,
                                   eval_precision(self.cfg, self.dist.device),
                                   num_workers=self.cfg.data.num_workers, progress=t.progress)
                except EvaluationError as err:
                    failure, top1[1] = err, 1.0
                else:
                    record.update(val_top1=res.top1, val_top5=res.top5, val_mean_class_acc=res.mean_class_acc,
                                  val_videos=res.num_videos, val_skipped=res.skipped)
                    top1[0] = res.top1
                    self.confusions = [h.confusion for h in res.heads]
            top1 = all_reduce_sum(top1, self.dist)
            if top1[1]:  # keep the trained epoch (resuming evaluates it again), choose no best epoch
                self.save()
                raise EvaluationError(f"validation after epoch {epoch + 1}: {failure or 'failed on rank 0'}; the "
                                      f"trained epoch is kept in {checkpoint_path(self.run_dir, 'last')} and is "
                                      "evaluated again when the run resumes")
            record["val_top1"] = float(top1[0])
            self.schedule.observe(float(top1[0]))
        is_best = "val_top1" in record and record["val_top1"] > s.best_top1
        if is_best:
            s.best_top1 = record["val_top1"]
        s.history.append(record)
        s.epoch, s.step, s.sums = epoch + 1, 0, Sums()
        self.save(best=is_best)
        if self.dist.is_main:
            print(json.dumps(record), file=sys.stderr)
            if t.reports:
                self.write_reports(record)
        return record

    def write_reports(self, record: dict[str, Any]) -> None:
        """TensorBoard scalars, ``curves.png`` and ``confusion[_<head>].png`` when those packages import."""
        self.tensorboard.log(record)
        plot_curves(self.state.history, self.run_dir / "curves.png")
        classes = self.setup.classes
        named = classes.items() if isinstance(classes, dict) else [("", classes)]
        for (head, names), confusion in zip(named, self.confusions):
            plot_confusion(confusion, names, self.run_dir / f"confusion{'_' + head if head else ''}.png",
                           f"{head or 'val'} confusion, epoch {record['epoch']} (row-normalised)")

    def fit(self) -> list[dict[str, Any]]:
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for p in remove_stale_temp(self.run_dir, self.run_dir / "checkpoints"):
                print(f"removed {p}, left by a run that was killed while writing", file=sys.stderr)
            self.cfg.save(self.run_dir / "config.yaml")
        barrier(self.dist)
        self.resume()
        try:
            if self.state.epoch >= self.cfg.train.epochs:
                if self.dist.is_main:
                    print(self.complete_message(), file=sys.stderr)
                return self.state.history
            with self.stop:
                for epoch in range(self.state.epoch, self.cfg.train.epochs):
                    self.stop_if_requested()  # Ctrl-C during the previous epoch's validation
                    self.train_epoch(epoch)
                    self.end_epoch(epoch)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
            cleanup(self.dist)
        return self.state.history


def train(cfg: Config) -> list[dict[str, Any]]:
    """Train (or resume) the run ``cfg`` describes; returns one record per epoch (as in ``metrics.jsonl``)."""
    return Trainer(cfg).fit()
