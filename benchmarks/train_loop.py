"""Training-loop cost of checkouts, compared in one run: CPU seconds of a tiny ``videoformer train``.

    python benchmarks/train_loop.py BASE_CHECKOUT NEW_CHECKOUT [--rounds 5] [--reps 3]

Generates a 3-class folder dataset (48 train / 6 val H.264 clips, 8 frames of 40x40), then alternates the
checkouts: each round runs every checkout in a fresh process, which trains ``--reps`` times (2 epochs of
``vit_tiny_framewise`` 4x32, batch 4, mixup + CutMix on: 24 steps, the loader, the Batch path, mixup and two
validations) and drops its first (warm-up) run. Reports per checkout the median process CPU time (one torch
thread; CPU time rather than wall time, which a loaded machine makes noisy) and each checkout's ratio to the
first. Needs the checkouts' ``tests/engine_util.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(data: Path, reps: int) -> None:
    import torch

    torch.set_num_threads(1)
    from engine_util import base_overrides

    import videoformer
    from videoformer.engine import load_config, train

    times = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as out:
            cfg = load_config(None, base_overrides(data, Path(out)) + [
                "train.mixup_alpha=0.3", "train.cutmix_alpha=1.0", "data.num_workers=0"])
            start = time.process_time()
            train(cfg)
            times.append(time.process_time() - start)
    print(json.dumps({"package": videoformer.__file__, "cpu_s": times}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkouts", nargs="+", type=Path)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.reps)
        return 0
    trees = [c.resolve() for c in args.checkouts]
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from engine_util import "
                        "make_folder_dataset; make_folder_dataset(Path(sys.argv[1]), per_class=(16, 2))", d],
                       check=True, env={**os.environ, "PYTHONPATH": f"{trees[0]}:{trees[0] / 'tests'}"})
        runs: dict[Path, list[float]] = {t: [] for t in trees}
        for _ in range(args.rounds):
            for tree in trees:
                out = subprocess.run([sys.executable, __file__, str(tree), "--child", d, "--reps", str(args.reps)],
                                     cwd=tree, capture_output=True, text=True, check=True,
                                     env={**os.environ, "PYTHONPATH": f"{tree}:{tree / 'tests'}"})
                rec = json.loads(out.stdout.strip().splitlines()[-1])
                if not rec["package"].startswith(str(tree)):
                    raise RuntimeError(f"{tree}: imported videoformer from {rec['package']}")
                runs[tree] += rec["cpu_s"][1:]
    first = statistics.median(runs[trees[0]])
    for tree in trees:
        med = statistics.median(runs[tree])
        print(f"{tree}: median {med:.3f} CPU s over {len(runs[tree])} runs (min {min(runs[tree]):.3f}), "
              f"ratio to {trees[0].name} {med / first:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
