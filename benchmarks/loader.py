"""End-to-end training loader throughput: clips/s of the DataLoader (decode + augment + collate) per worker.

    python benchmarks/loader.py [--videos 16] [--batches 12] [--workers 0 1 2]

Generates ``--videos`` 10 s H.264 videos (340x256, 25 fps, GOP 12, B-frames, AAC audio) and their MPEG-4
re-encodes, then times the training pipelines of the library as ``videoformer train`` builds them
(``VideoDataset`` + ``VideoTransform(train=True)``, ``CompressedVideoDataset`` + ``CompressedTransform``, batch
4, default collate): TimeSformer-style dense 8x32 at 224, TSN 8 segments at 224, ViViT-style dense 32x2 at 224,
MM-ViT compressed 8 segments with audio. Wall clock after one warm-up batch per worker (the frame index of every
video is built then); ``clips/s per worker`` = clips/s / workers (0 workers: the main process). To feed a GPU
that trains at G clips/s, use about G / (clips/s per worker) workers, on as many free cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from videoformer.data import (CompressedTransform, CompressedVideoDataset, VideoDataset, VideoRecord, VideoTransform,
                              reencode_mpeg4)
from videoformer.data.synthetic import barcode_frames, tone, write_video


def make_videos(work: Path, n: int) -> tuple[list[VideoRecord], list[VideoRecord]]:
    rgb, comp = [], []
    for k in range(n):
        path = write_video(work / f"v{k}.mp4", barcode_frames(250, 256, 340, seed=k), gop=12, max_b_frames=2,
                           audio=tone(10.0, freq=220.0 * (1 + k % 4)), options={"preset": "fast"})
        rgb.append(VideoRecord(path, k % 4))
        comp.append(VideoRecord(reencode_mpeg4(path, work / f"v{k}_mpeg4.mp4"), k % 4))
    return rgb, comp


def pipelines(rgb: list[VideoRecord], comp: list[VideoRecord]) -> dict:
    aug = VideoTransform(size=224, train=True)
    return {
        "RGB dense 8x32, 224": VideoDataset(rgb, num_frames=8, sampler="dense", stride=32, transform=aug, seed=0),
        "RGB TSN 8, 224": VideoDataset(rgb, num_frames=8, sampler="uniform", transform=aug, seed=0),
        "RGB dense 32x2, 224": VideoDataset(rgb, num_frames=32, sampler="dense", stride=2, transform=aug, seed=0),
        "compressed 8 seg + audio, 224": CompressedVideoDataset(
            comp, num_segments=8, train=True, transform=CompressedTransform(size=224, train=True), seed=0),
    }


def clips_per_second(ds, workers: int, batches: int, batch_size: int = 4) -> float:
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    for _ in range(max(workers, 1)):  # warm-up: workers start, index their files
        next(it)
    t, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += len(batch[-1]) if not isinstance(batch, dict) else len(batch["label"])
    return n / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = ["| pipeline | workers | clips/s | clips/s per worker |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as d:
        rgb, comp = make_videos(Path(d), args.videos)
        for name, ds in pipelines(rgb, comp).items():
            for w in args.workers:
                rate = clips_per_second(ds, w, args.batches)
                rows.append(f"| {name} | {w} | {rate:.1f} | {rate / max(w, 1):.1f} |")
                print(rows[-1], flush=True)
    print(f"\n{os.cpu_count()} CPUs, torch threads 1, batch 4, wall clock\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
