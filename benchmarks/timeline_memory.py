"""Peak memory of ``videoformer predict --window/--stride`` and ``videoformer features`` against the video's length
(issue 13: it must not grow with the length: windows are decoded one at a time).

    python benchmarks/timeline_memory.py [--minutes 2 10] [--window 2 --stride 1]

Writes, per length, an H.264 video (160x128, 25 fps, GOP 250, AAC; ``long_video.write_long``) and a tiny model
(``vivit_tiny_joint``, random weights: memory, not accuracy, is measured), then runs each command in a fresh
process and reports its peak resident set size (``VmHWM`` at exit), wall time and window count.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from long_video import write_long  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# ``python -m videoformer ARGS`` that writes its own VmHWM (peak RSS since exec) at exit. A child's rusage
# ru_maxrss is no use here: Linux carries the parent's RSS at fork time into it across exec.
WRAPPER = ("import atexit, os, runpy, sys; atexit.register(lambda: open(os.environ['HWM_FILE'], 'w').write("
           "next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])); "
           "sys.argv[0] = 'videoformer'; runpy.run_module('videoformer', run_name='__main__', alter_sys=True)")


def peak(args: list[str], cwd: Path) -> tuple[float, float]:
    """(peak RSS MiB, wall seconds) of ``videoformer ARGS`` run to completion in its own process."""
    hwm = cwd / "vmhwm.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HWM_FILE": str(hwm)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"videoformer {' '.join(args)} failed: {done.stderr[-2000:]}")
    return int(hwm.read_text()) / 1024, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[2, 10])
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--stride", type=float, default=1.0)
    args = ap.parse_args()
    import videoformer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        videoformer.create_model("vivit_tiny_joint", num_classes=10).save_pretrained(tmp / "model")
        print(f"{'minutes':>7} {'frames':>7} {'MB':>6} {'windows':>7} | {'predict RSS':>11} {'wall':>6} | "
              f"{'features RSS':>12} {'wall':>6}")
        for minutes in args.minutes:
            video = tmp / f"long{minutes:g}.mp4"
            write_long(video, int(minutes * 60), "libx264", gop=250)
            windows = int((minutes * 60 - args.window) // args.stride) + 1
            opts = ["--window", str(args.window), "--stride", str(args.stride)]
            p_rss, p_wall = peak(["predict", "model", video.name, *opts, "--out", "tl"], tmp)
            f_rss, f_wall = peak(["features", "model", video.name, "feats", *opts], tmp)
            print(f"{minutes:>7g} {int(minutes * 60 * 25):>7} {video.stat().st_size / 1e6:>6.1f} {windows:>7} | "
                  f"{p_rss:>8.0f} MiB {p_wall:>5.0f}s | {f_rss:>9.0f} MiB {f_wall:>5.0f}s", flush=True)


if __name__ == "__main__":
    main()
