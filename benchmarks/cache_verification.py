"""Cost of verifying the ``videoformer extract`` cache on read, per sample (issue 9.5).

Writes one UCF-101-sized clip (7.2 s at 25 fps, 340x256, a panned random texture: a worst case for the
encoder, so a large file), extracts it with the default parameters, then times in this process's CPU clock
(best of N): the SHA-1 check of the cached video on its first read, a later read of the unchanged file, the
log-mel load + check, and a whole ``CompressedVideoDataset`` sample (8 segments, audio) with and without the
video check.

    python benchmarks/cache_verification.py [--work /tmp/cache_verification]
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from videoformer.data import prepare
from videoformer.data.annotations import read_folder
from videoformer.data.datasets import CompressedVideoDataset
from videoformer.data.synthetic import tone, write_video


def best(fn, n: int) -> float:
    """Smallest CPU time of ``n`` calls (other processes only add time)."""
    times = []
    for _ in range(n):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/cache_verification", help="scratch folder (deleted first)")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (256 + 100, 340 + 200, 3), dtype=np.uint8)
    frames = np.stack([texture[t // 2: t // 2 + 256, t: t + 340] for t in range(180)])  # camera pan
    (work / "ds" / "c").mkdir(parents=True)
    write_video(work / "ds" / "c" / "v.mp4", frames, fps=25, audio=tone(7.2))
    res = prepare.extract_dataset(work / "ds", work / "out", progress=False)
    record = read_folder(res.root).records[0]
    video = Path(record.path)

    def first_read() -> None:
        prepare._VERIFIED.clear()
        prepare.verify_cached(video)

    ds = CompressedVideoDataset([record], num_segments=8, train=False)
    verify = best(first_read, 3 * args.iters)
    again = best(lambda: prepare.verify_cached(video), 3 * args.iters)
    logmel = best(lambda: prepare.cached_logmel(video), 3 * args.iters)
    with_check = best(lambda: (first_read(), ds.load(0)), args.iters)
    without = best(lambda: ds._load(record, ds._rng(0)), args.iters)
    mb = video.stat().st_size / 1e6
    print(f"cached video {mb:.2f} MB, log-mel {prepare.logmel_path(video).stat().st_size / 1e3:.0f} kB")
    print(f"video SHA-1 check, first read: {verify * 1e3:.2f} ms ({mb / 1e3 / verify:.2f} GB/s); "
          f"later reads of the unchanged file: {again * 1e3:.3f} ms")
    print(f"log-mel load + check: {logmel * 1e3:.2f} ms")
    print(f"sample (8 segments, audio): {with_check * 1e3:.1f} ms with the first-read check, {without * 1e3:.1f} ms "
          f"without; the check is {verify / with_check:.1%} of the sample")


if __name__ == "__main__":
    main()
