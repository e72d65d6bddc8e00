"""Clips/s of videoformer vs Hugging Face transformers, with identical weights, in one run.

Models: TimeSformer-B/16 divided space-time (8×224²) and ViViT-B/16x2 model 1 (32×224², tubelet 2), 400
classes. The HF model is built with random weights and converted in memory with ``convert_timesformer`` /
``convert_vivit`` (the converters behind ``load_pretrained``); the script checks the two give the same logits
before timing. Inference = forward under ``no_grad``; training = forward + cross-entropy + backward (no
optimiser step). Runs of ours and HF alternate (order flipped every iteration), so load from other processes
hits both alike; clips/s come from the best (minimum) time of ``--iters`` runs -- interference only ever adds
time -- and the ratio of median times is printed too. ``--clock cpu`` times with the CPU time of this process
instead of the wall clock: with ``--threads 1`` it does not count time the core spent on other processes, the
robust choice on a shared machine. On CUDA the forward runs under bf16 autocast.

    python benchmarks/throughput.py                       # both models, CPU (or the GPU if present)
    python benchmarks/throughput.py --models timesformer --iters 5 --threads 2
    python benchmarks/throughput.py --threads 1 --clock cpu  # ratios unaffected by other processes
    python benchmarks/throughput.py --frames 4 --size 64  # quick smoke run at a smaller clip
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from videoformer.weights.common import load_checked
from videoformer.weights.hf import build_model, config_from_hf, convert_timesformer, convert_vivit


@dataclass(frozen=True)
class Bench:
    title: str
    hf_model: Callable[[int, int], nn.Module]  # (frames, size) -> random-init HF model
    convert: Callable
    frames: int


def _timesformer(frames: int, size: int) -> nn.Module:
    config = transformers.TimesformerConfig(image_size=size, patch_size=16, num_frames=frames, num_labels=400,
                                            attention_type="divided_space_time")
    return transformers.TimesformerForVideoClassification(config)


def _vivit(frames: int, size: int) -> nn.Module:
    config = transformers.VivitConfig(image_size=size, num_frames=frames, tubelet_size=[2, 16, 16], num_labels=400)
    return transformers.VivitForVideoClassification(config)


BENCHES = {
    "timesformer": Bench("TimeSformer-B/16 divided", _timesformer, convert_timesformer, 8),
    "vivit": Bench("ViViT-B/16x2 model 1", _vivit, convert_vivit, 32),
}


def build_pair(bench: Bench, frames: int, size: int) -> tuple[nn.Module, nn.Module]:
    """(ours, HF) with identical weights: the HF model's state dict converted in memory."""
    torch.manual_seed(0)
    hf = bench.hf_model(frames, size)
    config = config_from_hf({**hf.config.to_dict(), "architectures": [type(hf).__name__]})
    ours = load_checked(build_model(config), bench.convert(hf.state_dict(), config, "in-memory HF model"), "HF")
    return ours, hf


class Runner:
    """One timed step (inference or training) of a model on a fixed clip."""

    def __init__(self, model: nn.Module, x: torch.Tensor, is_hf: bool, train: bool, device: torch.device,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.model, self.x, self.is_hf, self.train, self.device, self.clock = model, x, is_hf, train, device, clock
        self.labels = torch.zeros(x.shape[0], dtype=torch.long, device=device)
        model.train(train)

    def logits(self) -> torch.Tensor:
        cuda = self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
            return self.model(pixel_values=self.x).logits if self.is_hf else self.model(self.x)

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = self.clock()
        if self.train:
            self.model.zero_grad(set_to_none=True)
            F.cross_entropy(self.logits().float(), self.labels).backward()
        else:
            with torch.no_grad():
                self.logits()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return self.clock() - start


def time_alternating(ours: Runner, hf: Runner, iters: int, warmup: int) -> tuple[list[float], list[float]]:
    """Seconds per step of each (``iters`` timings after ``warmup``), alternating which runs first."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for i in range(warmup + iters):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            t = (ours, hf)[which]()
            if i >= warmup:
                times[which].append(t)
    return times[0], times[1]


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, and the core count."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor() or 'CPU'}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(BENCHES), default=list(BENCHES))
    parser.add_argument("--modes", nargs="+", choices=["inference", "training"], default=["inference", "training"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per model and mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--frames", type=int, help="override the clip length (default 8 / 32)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time (CPU devices only; use with --threads 1)")
    args = parser.parse_args()
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu measures CPU work; use it with --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, {device.type} ({name}), "
          f"{args.threads} threads, batch {args.batch}, best of {args.iters} after {args.warmup} warm-up, "
          f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}, {args.clock} clock")
    print("| model | clip | mode | HF attention | ours clips/s | HF clips/s | ours / HF | ours / HF (median) "
          "| max abs logit diff |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for key in args.models:
        bench = BENCHES[key]
        frames = args.frames or bench.frames
        ours, hf = build_pair(bench, frames, args.size)
        ours, hf = ours.to(device), hf.to(device)
        x = torch.randn(args.batch, 3, frames, args.size, args.size, device=device)
        x_hf = x.permute(0, 2, 1, 3, 4).contiguous()  # HF layout (B, T, C, H, W)
        with torch.no_grad():
            diff = (ours.eval()(x).float() - hf.eval()(pixel_values=x_hf).logits.float()).abs().max().item()
        if diff > 1e-2:  # fp32 (TF32 convolutions on CUDA at most): the weights were not converted faithfully
            raise SystemExit(f"{bench.title}: logits differ from Hugging Face by {diff:.2e}")
        for mode in args.modes:
            train = mode == "training"
            runners = Runner(ours, x, False, train, device, clock), Runner(hf, x_hf, True, train, device, clock)
            t_ours, t_hf = time_alternating(*runners, args.iters, args.warmup)
            best, median = (min(t_ours), min(t_hf)), (statistics.median(t_ours), statistics.median(t_hf))
            print(f"| {bench.title} | {frames}×{args.size}² | {mode} | {hf.config._attn_implementation} | "
                  f"{args.batch / best[0]:.3f} | {args.batch / best[1]:.3f} | {best[1] / best[0]:.2f} | "
                  f"{median[1] / median[0]:.2f} | {diff:.1e} |", flush=True)
        del ours, hf


if __name__ == "__main__":
    main()
