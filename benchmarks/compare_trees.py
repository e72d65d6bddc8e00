"""Speed of the same models in two checkouts of videoformer, in one process: did a refactor slow anything down?

Both trees are imported in turn (the first tree's ``videoformer`` modules are dropped from ``sys.modules`` before
the second is imported; the models built from each keep their own classes), every model gets the same weights
(same state-dict keys are required) and the same inputs, the logits are checked equal, then runs of the two
alternate (order flipped every iteration) so load from other processes hits both alike. Times are the CPU time
of this process (``--threads 1``: time the core spent on other processes is not counted); the ratio is
``before / after`` of the best of ``--iters`` runs (> 1: the second tree is faster).

    python benchmarks/compare_trees.py /work/main . --iters 5
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time

import torch

# (registry name, overrides): medium shapes that finish in seconds on one core.
MEDIUM = dict(dim=192, depth=4, num_heads=6, img_size=128, patch_size=16, num_frames=8, num_classes=10)
MODELS = [
    ("vit_tiny_framewise", MEDIUM),
    ("timesformer_tiny_divided", MEDIUM),
    ("timesformer_tiny_local_global", MEDIUM),
    ("vivit_tiny_joint", dict(MEDIUM, tubelet_t=2)),
    ("vivit_tiny_fe", dict(MEDIUM, tubelet_t=2)),
    ("vivit_tiny_fsa", dict(MEDIUM, tubelet_t=2)),
    ("vivit_tiny_fdp", dict(MEDIUM, tubelet_t=2)),
    ("msca_tiny", MEDIUM),
    ("msca_tiny_patch", MEDIUM),
    ("tokenshift_tiny", MEDIUM),
    ("mmvit_tiny_merged", dict(MEDIUM, img_size=64, num_frames=4)),
    ("mmvit_tiny_coattn", dict(MEDIUM, img_size=64, num_frames=4)),
    ("mmvit_tiny_shiftmerge", dict(MEDIUM, img_size=64, num_frames=4)),
    ("mmvit_tiny_local", dict(MEDIUM, img_size=64, num_frames=4)),
    ("mvit_tiny", dict(img_size=64, num_frames=8)),
]


def build(tree: str, names: list[str]) -> dict:
    for mod in [m for m in sys.modules if m == "videoformer" or m.startswith("videoformer.")]:
        del sys.modules[mod]
    sys.path.insert(0, tree)
    try:
        models = importlib.import_module("videoformer.models")
    finally:
        sys.path.remove(tree)
    return {n: models.create_model(n, **o) for n, o in MODELS if n in names}


def inputs(model, batch: int, g: torch.Generator):
    cfg = model.cfg
    if hasattr(model, "input_shapes"):
        return {m: torch.randn(batch, *s, generator=g) for m, s in model.input_shapes().items()}
    return torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, generator=g)


def run(model, x, train: bool) -> float:
    start = time.process_time()
    if train:
        model(x).square().mean().backward()
    else:
        with torch.no_grad():
            model(x)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=[n for n, _ in MODELS])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before, after = build(args.before, args.models), build(args.after, args.models)
    print(f"{'model':32s} {'mode':9s} {'before ms':>9s} {'after ms':>9s} {'before/after':>12s}")
    ratios = []
    for name in args.models:
        a, b = before[name], after[name]
        b.load_state_dict(a.state_dict(), strict=True)
        x = inputs(a, args.batch, torch.Generator().manual_seed(0))
        for m in (a, b):
            m.eval()
        with torch.no_grad():
            diff = (a(x) - b(x)).abs().max().item()
        if diff > 1e-4:
            raise SystemExit(f"{name}: the trees disagree (max |Δlogit| {diff:.2e})")
        for train in (False, True):
            for m in (a, b):
                m.train(train)
                run(m, x, train)  # warm-up
            times = {0: [], 1: []}
            for i in range(args.iters):
                for k in ((0, 1) if i % 2 == 0 else (1, 0)):
                    times[k].append(run((a, b)[k], x, train))
            t0, t1 = min(times[0]), min(times[1])
            ratios.append(t0 / t1)
            print(f"{name:32s} {'training' if train else 'inference':9s} {t0 * 1e3:9.1f} {t1 * 1e3:9.1f} "
                  f"{t0 / t1:12.3f}", flush=True)
    geo = torch.tensor(ratios).log().mean().exp().item()
    print(f"geometric mean before/after over {len(ratios)} rows: {geo:.3f}")


if __name__ == "__main__":
    main()
