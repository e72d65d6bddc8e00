"""bf16 vs fp32 inference of trained runs: top-1 agreement and accuracy on each run's validation videos.

Each run is scored with ``predict_files`` (the code behind ``videoformer predict``) twice, ``eval.precision=fp32``
and ``eval.precision=bf16`` (autocast), with the same views; the script prints the fraction of videos whose top
class is the same, each precision's top-1 accuracy (first head) and the largest change of a top score.

    python -m videoformer demo --out demo_out                         # trains the demo models
    python benchmarks/precision_agreement.py demo_out/runs/* --views 4x3
"""
from __future__ import annotations

import argparse
import os

import torch

from videoformer.engine.data import read_split
from videoformer.engine.predict import load_run, parse_views, predict_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (or checkpoints) with a data.val split")
    parser.add_argument("--views", default="1x1", help="KxS views per video (default 1x1)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    k, s = parse_views(args.views)
    print(f"# torch {torch.__version__}, {args.threads} threads, views {args.views}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| run | model | videos | same top-1 | top-1 fp32 | top-1 bf16 | max abs change of a top score |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for path in args.runs:
        run = load_run(path, ["eval.precision=fp32"])
        records = read_split(run.cfg.data, "val", run.classes if isinstance(run.classes, list) else None).records
        names = run.class_lists[0]
        labels = [r.label if isinstance(r.label, int) else r.label[0] for r in records]
        head = run.head_names[0]
        scored = {}
        for precision in ("fp32", "bf16"):
            run.cfg.eval.precision = precision
            scored[precision] = predict_files(run, [r.path for r in records], k, s, topk=1)
        pairs = [(a["predictions"][head][0], b["predictions"][head][0], label)
                 for a, b, label in zip(scored["fp32"], scored["bf16"], labels)
                 if "predictions" in a and "predictions" in b]
        n = len(pairs)
        same = sum(a["class"] == b["class"] for a, b, _ in pairs)
        right = {p: sum(pair[i]["class"] == names[pair[2]] for pair in pairs) for i, p in enumerate(("fp32", "bf16"))}
        change = max((abs(a["score"] - b["score"]) for a, b, _ in pairs if a["class"] == b["class"]), default=0.0)
        print(f"| {path} | {run.cfg.model.name} | {n} | {same / n:.3f} ({same}/{n}) | {right['fp32'] / n:.3f} | "
              f"{right['bf16'] / n:.3f} | {change:.4f} |", flush=True)


if __name__ == "__main__":
    main()
