"""The ``videoformer`` command: ``info`` (parameters and GMACs of a registered model), ``list`` (model names),
``train`` (a YAML config with ``key=value`` overrides), ``eval`` (multi-view testing of a run or checkpoint),
``predict`` (class scores of video files).

Later subcommands (``demo``) add a parser in :func:`build_parser` and a handler.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .analysis import count_model
from .models import list_models


def cmd_info(args: argparse.Namespace) -> int:
    """Parameters and GMACs of one clip, built on the meta device (no weights, no compute)."""
    try:
        report = count_model(args.model, num_frames=args.frames, img_size=args.size, num_classes=args.num_classes)
    except ValueError as err:  # unknown model (lists close matches) or an invalid size
        print(f"videoformer info: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.summary()))
        return 0
    c, t, h, w = report.input_shape
    print(f"model   {report.model}")
    print(f"input   {c}×{t}×{h}×{w} (C×T×H×W), one clip")
    print(f"params  {report.params / 1e6:.2f} M")
    print(f"GMACs   {report.gmacs:.2f} (matmul, linear, conv and attention Q·Kᵀ, A·V multiply-accumulates)")
    print("by op   " + ", ".join(f"{op} {macs / 1e9:.2f}" for op, macs in sorted(report.ops.items())))
    print()
    print(report.table())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Registered names matching a shell pattern; a plain word matches as a substring."""
    pattern = args.pattern if any(ch in args.pattern for ch in "*?[") else f"*{args.pattern}*"
    names = list_models(pattern)
    if not names:
        print(f"videoformer list: no registered model matches {args.pattern!r}", file=sys.stderr)
        return 1
    print("\n".join(names))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) the run of a config file; configuration errors stop before the first step."""
    from .engine import ConfigError, TrainingDiverged, load_config, train

    try:
        train(load_config(args.config, args.overrides))
    except TrainingDiverged as err:
        print(f"videoformer train: {err}", file=sys.stderr)
        return 3
    except (ConfigError, ValueError) as err:  # config, annotation, checkpoint and model errors are ValueErrors
        print(f"videoformer train: {err}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videoformer", description="Video transformers: model info and tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="parameters and GMACs of a registered model for one clip")
    info.add_argument("model", help="registered model name (see `videoformer list`)")
    info.add_argument("--frames", type=int, help="frames per clip T (default: the model's)")
    info.add_argument("--size", type=int, help="frame height = width S (default: the model's)")
    info.add_argument("--num-classes", type=int, help="classifier outputs C (default: the model's)")
    info.add_argument("--json", action="store_true", help="print one JSON object: model, params, gmacs, input")
    info.set_defaults(handler=cmd_info)

    lst = sub.add_parser("list", help="registered model names")
    lst.add_argument("pattern", nargs="?", default="*", help="shell pattern or substring, e.g. 'vivit_*'")
    lst.set_defaults(handler=cmd_list)

    tr = sub.add_parser("train", help="train a model from a YAML config (resumes from OUTPUT_DIR/checkpoints/last.pt)")
    tr.add_argument("config", help="YAML file, e.g. configs/vivit_b_fe_k400.yaml")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=0.01")
    tr.set_defaults(handler=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``videoformer`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
