"""``make demo``: an honest end-to-end smoke until the training demo exists.

Builds a registered model, classifies a generated clip (a square moving across the frames), and prints
``videoformer info`` for it and for the full-size model it shrinks. The weights are random: the class printed
is not a prediction of anything, and the demo says so.
"""
from __future__ import annotations

import argparse
import time

import torch

from .cli import main as cli_main
from .models import create_model


def moving_square(frames: int = 8, size: int = 64, square: int = 12) -> torch.Tensor:
    """A ``(1, 3, T, H, W)`` clip: a bright square moving diagonally over a dark background, in [0, 1]."""
    clip = torch.full((1, 3, frames, size, size), 0.1)
    for t in range(frames):
        o = t * (size - square) // max(frames - 1, 1)
        clip[0, :, t, o : o + square, o : o + square] = torch.tensor([0.9, 0.6, 0.2])[:, None, None]
    return clip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="timesformer_tiny_divided")
    parser.add_argument("--full", default="timesformer_b16_divided", help="full-size model to report info for")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = create_model(args.model, num_frames=8, img_size=64, num_classes=5).eval()
    clip = moving_square()
    start = time.perf_counter()
    with torch.no_grad():
        probs = model(clip).softmax(-1)[0]
    ms = (time.perf_counter() - start) * 1e3
    print(f"{args.model}: clip {tuple(clip.shape)} -> class {int(probs.argmax())} "
          f"(p={float(probs.max()):.3f}, random weights: not a real prediction) in {ms:.1f} ms")
    for name, extra in ((args.model, ["--frames", "8", "--size", "64", "--num-classes", "5"]), (args.full, [])):
        print()
        if cli_main(["info", name, *extra]) != 0:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
