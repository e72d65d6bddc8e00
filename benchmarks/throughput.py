"""Clips/s and roofline fraction (MFU) of videoformer vs Hugging Face transformers, identical weights, one run.

Models: TimeSformer-B/16 divided space-time (8×224²), ViViT-B/16x2 model 1 (16×224² by default: 8 × 196
tubelets, as issue 11 measured; the paper's 32 frames with ``--vivit-frames 32``), 400 classes, against
``TimesformerForVideoClassification`` / ``VivitForVideoClassification``; MViT-B 16×4 (16×224²) has no
Hugging Face model, so it gets its MFU only. The HF model is built with random weights and converted in memory
with ``convert_timesformer`` / ``convert_vivit`` (the converters behind ``load_pretrained``); before timing,
the script checks both give the same fp32 logits.

Precisions (``--precision``): ``fp32``, and ``bf16`` = the fp32 model under ``torch.autocast(dtype=bfloat16)``
on the CPU or the GPU, for both implementations. Inference = forward under ``no_grad``; training = forward +
cross-entropy + backward (no optimiser step).

MFU = 2 × MACs / time / GEMM peak. MACs: ``videoformer.analysis.count_macs`` of the model (the ``info``
convention: every matmul, linear and convolution, the attention products included; TimeSformer's temporal
``fc`` counted unfolded). GEMM peak: measured in the same run and interleaved with the model timings (each timing
``--gemm-span`` seconds of back-to-back products, so it sees the same load as a model run), as the
best GFLOP/s of the ViT-B linear layers' matrix products (``1568×768 @ 768×{768, 2304, 3072}``,
``1568×3072 @ 3072×768``) in that precision, through ``torch.mm`` and (CPU) oneDNN's linear kernel, whichever
is faster; so an MFU of 100 % means "as fast as this machine multiplies ViT-B-sized matrices at the time".

Timing: runs of ours and HF alternate (order flipped every iteration), with one round of the GEMMs between,
so load from other processes hits all alike; the best (minimum) of ``--iters`` times after ``--warmup``
counts -- interference only ever adds time -- and the ratio of the medians is printed too. ``--clock cpu``
uses this process's CPU time (CPU only; with ``--threads 1`` time the core spent elsewhere is not counted).
``--malloc tuned`` (default) sets glibc's thresholds as the ``videoformer`` command does, for both models alike.
On CUDA, times come from CUDA events. The load average is printed before and after.

    python benchmarks/throughput.py --threads 2                     # all models, fp32 and bf16, inference
    python benchmarks/throughput.py --models timesformer --precision bf16 --iters 5
    python benchmarks/throughput.py --frames 4 --size 64 --iters 2  # smoke run at a small clip
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from videoformer.allocator import tune_malloc
from videoformer.analysis import count_macs
from videoformer.layers.linear import onednn_available
from videoformer.models import create_model
from videoformer.weights.common import load_checked
from videoformer.weights.hf import build_model, config_from_hf, convert_timesformer, convert_vivit

GEMM_SHAPES = ((1568, 768, 768), (1568, 768, 2304), (1568, 768, 3072), (1568, 3072, 768))  # (m, k, n)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Bench:
    title: str
    frames: int
    hf_model: Optional[Callable[[int, int], nn.Module]] = None  # (frames, size) -> random-init HF model
    convert: Optional[Callable] = None
    name: str = ""  # registry name of a model without an HF counterpart


def _timesformer(frames: int, size: int) -> nn.Module:
    config = transformers.TimesformerConfig(image_size=size, patch_size=16, num_frames=frames, num_labels=400,
                                            attention_type="divided_space_time")
    return transformers.TimesformerForVideoClassification(config)


def _vivit(frames: int, size: int) -> nn.Module:
    config = transformers.VivitConfig(image_size=size, num_frames=frames, tubelet_size=[2, 16, 16], num_labels=400)
    return transformers.VivitForVideoClassification(config)


BENCHES = {
    "timesformer": Bench("TimeSformer-B/16 divided", 8, _timesformer, convert_timesformer),
    "vivit": Bench("ViViT-B/16x2 model 1", 16, _vivit, convert_vivit),
    "mvit": Bench("MViT-B 16×4", 16, name="mvit_b_16x4"),
}


def build_pair(bench: Bench, frames: int, size: int) -> tuple[nn.Module, nn.Module | None]:
    """(ours, HF) with identical weights (the HF state dict converted in memory); (ours, None) without HF."""
    torch.manual_seed(0)
    if bench.hf_model is None:
        return create_model(bench.name, num_classes=400, num_frames=frames, img_size=size), None
    hf = bench.hf_model(frames, size)
    config = config_from_hf({**hf.config.to_dict(), "architectures": [type(hf).__name__]})
    ours = load_checked(build_model(config), bench.convert(hf.state_dict(), config, "in-memory HF model"), "HF")
    return ours, hf


def model_macs(model: nn.Module, frames: int, size: int) -> int:
    """MACs of one clip, counted on a meta-device copy of ``model``'s architecture (nothing is computed)."""
    with torch.device("meta"):
        meta = type(model)(model.cfg)
    return count_macs(meta, (3, frames, size, size)).macs


class Timer:
    """Seconds of one call: CUDA events on the GPU, else ``clock``."""

    def __init__(self, device: torch.device, clock: Callable[[], float]) -> None:
        self.device, self.clock = device, clock

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        begin = self.clock()
        fn()
        return self.clock() - begin


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


class Step:
    """One inference or training step of a model on a fixed clip, in one precision."""

    def __init__(self, model: nn.Module, x: torch.Tensor, is_hf: bool, train: bool, precision: str,
                 device: torch.device) -> None:
        self.model, self.x, self.is_hf, self.train, self.precision, self.device = model, x, is_hf, train, precision, device
        self.labels = torch.zeros(x.shape[0], dtype=torch.long, device=device)

    def logits(self) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.model(pixel_values=self.x).logits if self.is_hf else self.model(self.x)

    def __call__(self) -> None:
        self.model.train(self.train)
        if self.train:
            self.model.zero_grad(set_to_none=True)
            F.cross_entropy(self.logits().float(), self.labels).backward()
        else:
            with torch.no_grad():
                self.logits()


class GemmPeak:
    """Best GFLOP/s of the ViT-B matrix products in one precision, kept over every :meth:`measure`; on the CPU
    both through ``torch.mm`` (MKL / OpenBLAS) and oneDNN's linear kernel, the faster one counting."""

    def __init__(self, precision: str, device: torch.device, timer: Timer, span: float = 0.25) -> None:
        dtype, self.timer = DTYPES[precision], timer
        gen = torch.Generator().manual_seed(0)
        self.pairs = [(torch.randn(m, k, generator=gen).to(device, dtype),
                       torch.randn(n, k, generator=gen).to(device, dtype)) for m, k, n in GEMM_SHAPES]
        self.kernels: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"mm": lambda a, w: a @ w.t()}
        if device.type == "cpu" and onednn_available():
            self.kernels["oneDNN"] = lambda a, w: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")
        self.best = {(kernel, shape): 0.0 for kernel in self.kernels for shape in GEMM_SHAPES}
        self.reps = 1
        self.measure()  # warm-up, and the repetitions that make one timing last about ``span`` seconds
        self.reps = max(1, round(span / (sum(2 * math.prod(s) for s in GEMM_SHAPES) / self.flops)))

    def measure(self) -> None:
        """Time ``reps`` back-to-back products per kernel and shape: a timing spans as long as a model step's
        fraction of one, so load from other processes weighs on the peak as it does on the models."""
        with torch.no_grad():
            for kernel, fn in self.kernels.items():
                for shape, (a, w) in zip(GEMM_SHAPES, self.pairs):
                    seconds = self.timer(lambda: [fn(a, w) for _ in range(self.reps)])
                    flops = 2 * math.prod(shape) * self.reps / seconds
                    self.best[kernel, shape] = max(self.best[kernel, shape], flops)

    @property
    def flops(self) -> float:
        return max(self.best.values())

    def describe(self) -> str:
        return "; ".join(f"{kernel} " + ", ".join(f"{m}×{k}@{k}×{n}: {self.best[kernel, (m, k, n)] / 1e9:.0f}"
                                                 for m, k, n in GEMM_SHAPES) for kernel in self.kernels)


def time_alternating(steps: list[Step], peak: GemmPeak, timer: Timer, iters: int, warmup: int) -> list[list[float]]:
    """Seconds per step of each step (``iters`` timings after ``warmup``), flipping the order every iteration
    and measuring the GEMM peak between."""
    times: list[list[float]] = [[] for _ in steps]
    for i in range(warmup + iters):
        order = range(len(steps)) if i % 2 == 0 else reversed(range(len(steps)))
        for which in order:
            seconds = timer(steps[which])
            if i >= warmup:
                times[which].append(seconds)
        peak.measure()
    return times


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, and the core count."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor() or 'CPU'}, {os.cpu_count()} cores"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(BENCHES), default=list(BENCHES))
    parser.add_argument("--precision", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--modes", nargs="+", choices=["inference", "training"], default=["inference"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per model, precision and mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--frames", type=int, help="clip length of every model (default: 8 / 16 / 16)")
    parser.add_argument("--vivit-frames", type=int, help="clip length of ViViT only")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--gemm-span", type=float, default=0.25, help="seconds per timing of one GEMM shape")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time (CPU devices only; use with --threads 1)")
    parser.add_argument("--malloc", choices=["tuned", "default"], default="tuned",
                        help="tuned: glibc thresholds as the videoformer command sets them (videoformer/allocator.py), "
                             "for both implementations; default: glibc's own")
    args = parser.parse_args()
    malloc = "tuned" if args.malloc == "tuned" and tune_malloc() else "glibc default"

    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu measures CPU work; use it with --device cpu")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    timer = Timer(device, time.process_time if args.clock == "cpu" else time.perf_counter)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, {device.type} ({name}), "
          f"{args.threads} threads, batch {args.batch}, best of {args.iters} after {args.warmup} warm-up, "
          f"{args.clock} clock, malloc {malloc}; load average {load()}")
    peaks = {p: GemmPeak(p, device, timer, args.gemm_span) for p in args.precision}
    results = []  # (bench, frames, precision, mode, MACs, times of ours [, times of HF], logit diff)
    for key in args.models:
        bench = BENCHES[key]
        frames = args.frames or (args.vivit_frames if key == "vivit" and args.vivit_frames else bench.frames)
        ours, hf = build_pair(bench, frames, args.size)
        macs = model_macs(ours, frames, args.size)
        ours, hf = ours.to(device), hf.to(device) if hf is not None else None
        x = torch.randn(args.batch, 3, frames, args.size, args.size, device=device)
        x_hf = x.permute(0, 2, 1, 3, 4).contiguous()  # HF layout (B, T, C, H, W)
        diff = float("nan")
        if hf is not None:
            with torch.no_grad():
                diff = (ours.eval()(x).float() - hf.eval()(pixel_values=x_hf).logits.float()).abs().max().item()
            if diff > 1e-2:  # fp32: the weights were not converted faithfully
                raise SystemExit(f"{bench.title}: logits differ from Hugging Face by {diff:.2e}")
        for precision in args.precision:
            for mode in args.modes:
                train = mode == "training"
                steps = [Step(ours, x, False, train, precision, device)]
                if hf is not None:
                    steps.append(Step(hf, x_hf, True, train, precision, device))
                times = time_alternating(steps, peaks[precision], timer, args.iters, args.warmup)
                results.append((bench, frames, precision, mode, macs, times, diff))
                print(f"# {bench.title} {precision} {mode}: best s/clip "
                      f"{', '.join(f'{min(t) / args.batch:.3f}' for t in times)} (ours{', HF' if hf else ''}); "
                      f"load {load()}", flush=True)
        del ours, hf
    print("| model | clip | precision | mode | GMACs | ours s/clip | HF s/clip | ours / HF | ours / HF (median) "
          "| ours MFU | HF MFU | max abs logit diff (fp32) |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for bench, frames, precision, mode, macs, times, diff in results:
        best = [min(t) / args.batch for t in times]
        median = [statistics.median(t) / args.batch for t in times]
        flops = 2 * macs * (3 if mode == "training" else 1)  # backward: twice the forward's products
        mfu = [flops / b / peaks[precision].flops for b in best]  # against the best peak of the whole run
        hf_cols = (f"{best[1]:.3f} | {best[1] / best[0]:.2f} | {median[1] / median[0]:.2f} | {mfu[0]:.0%} | "
                   f"{mfu[1]:.0%}") if len(times) > 1 else f"– | – | – | {mfu[0]:.0%} | –"
        print(f"| {bench.title} | {frames}×{args.size}² | {precision} | {mode} | {macs / 1e9:.1f} | {best[0]:.3f} | "
              f"{hf_cols} | {diff:.1e} |")
    for precision, peak in peaks.items():
        print(f"# GEMM peak {precision}: {peak.flops / 1e9:.0f} GFLOP/s (best per shape: {peak.describe()})")
    print(f"# load average {load()}")


if __name__ == "__main__":
    main()
