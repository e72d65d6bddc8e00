"""The ``videoformer`` command: ``info`` (parameters and GMACs of a registered model), ``list`` (model names),
``train`` (a YAML config with ``key=value`` overrides), ``eval`` (multi-view testing of a run or checkpoint),
``predict`` (class scores of video files), ``convert`` (any pretrained checkpoint -> a videoformer directory),
``extract`` (compressed-domain cache of a dataset), ``rollout``
(attention-rollout overlays), ``export`` (ONNX / torch.export with preprocessing.json), ``features`` (pre-logits
embeddings per clip window), ``demo`` (the synthetic-action demo behind ``make demo``); ``predict --window``
writes sliding-window timelines.

Each subcommand is a parser in :func:`build_parser` and a handler.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from .allocator import tune_malloc

# Only the standard library at import time: `videoformer --help` must not import torch. Each handler imports
# what it needs.


def cmd_info(args: argparse.Namespace) -> int:
    """Parameters and GMACs of one clip, built on the meta device (no weights, no compute)."""
    from .analysis import count_model

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
    from .models import list_models

    pattern = args.pattern if any(ch in args.pattern for ch in "*?[") else f"*{args.pattern}*"
    names = list_models(pattern)
    if not names:
        print(f"videoformer list: no registered model matches {args.pattern!r}", file=sys.stderr)
        return 1
    print("\n".join(names))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) the run of a config file; configuration errors stop before the first step. Each
    failure is one message on stderr: exit 2 for bad input (config, data, checkpoint), 3 when training
    diverged, 1 when a file could not be written (disk full)."""
    from .data import DatasetFailure
    from .engine import TrainingDiverged, load_config, train
    from .engine.interrupt import TrainingStopped

    try:
        train(load_config(args.config, args.overrides))
    except TrainingStopped as err:
        print(f"videoformer train: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, the last written checkpoint stays
        print("videoformer train: interrupted; the last written checkpoint is kept and the same command resumes "
              "from it", file=sys.stderr)
        return 130
    except TrainingDiverged as err:
        print(f"videoformer train: {err}", file=sys.stderr)
        return 3
    except (ValueError, DatasetFailure) as err:  # config, annotation, checkpoint, model, unreadable data
        print(f"videoformer train: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # fileio.WriteError names the file
        print(f"videoformer train: {err}", file=sys.stderr)
        return 1
    return 0


def _views(text: str | None) -> tuple[int | None, int | None]:
    from .engine.predict import parse_views

    return parse_views(text) if text else (None, None)


def _precision(precision: str | None) -> list[str]:
    """``--precision`` as the ``eval.precision`` override."""
    return [f"eval.precision={precision}"] if precision else []


def cmd_init_config(args: argparse.Namespace) -> int:
    """Write (or print) a commented YAML config with every key and its default, pointed at a data folder."""
    from .engine.template import init_config
    from .fileio import atomic_write_text

    try:
        text, cfg = init_config(args.model, args.data, args.out)
        if args.out:
            if os.path.exists(args.out) and not args.force:
                raise ValueError(f"{args.out} exists; pass --force to overwrite it")
            atomic_write_text(args.out, text)
    except (ValueError, OSError) as err:  # unknown model, no train/ val/ folders, unwritable file
        print(f"videoformer init-config: {err}", file=sys.stderr)
        return 2
    if not args.out:
        print(text, end="")
        return 0
    print(f"wrote {args.out} ({cfg.model.name}, runs in {cfg.output_dir}); next: videoformer train {args.out}",
          file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Multi-view test of a run's validation split: top-1, top-5, mean class accuracy, per-class, confusion."""
    from .engine.predict import evaluate_run, load_run

    try:
        k, s = _views(args.views)
        run = load_run(args.run, [*args.overrides, *_precision(args.precision)], args.checkpoint)
        result = evaluate_run(run, k, s, shuffle_seed=0 if args.shuffle_frames else None, progress=not args.json)
    except ValueError as err:  # config, annotation and checkpoint errors; no video scored; NaN / inf scores
        print(f"videoformer eval: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"checkpoint": run.source, "checkpoint_note": run.note, "split": run.cfg.data.val,
                          "classes": run.classes, "shuffle_frames": args.shuffle_frames, **result.summary()},
                         allow_nan=False))
        return 0
    print(f"checkpoint      {run.source}")
    if run.note:
        print(f"                {run.note}")
    print(f"split           data.val = {run.cfg.data.val}")
    print(f"views           {result.views} (clips x crops){'  frames shuffled' if args.shuffle_frames else ''}")
    print(f"videos          {result.num_videos} scored, {result.skipped} skipped (missing or unreadable)")
    if result.action_acc is not None:
        print(f"action top-1    {result.action_acc:.4f}")
    for name, names, head in zip(run.head_names, run.class_lists, result.heads):
        print(f"{name} top-1{'':<{9 - len(name)}}{head.top1:.4f}   top-5 {head.top5:.4f}   "
              f"mean class acc {head.mean_class_acc:.4f}")
        for label, acc in zip(names, head.per_class):
            if acc == acc:  # classes present in the split
                print(f"  {label:<30} {acc:.4f}")
    for err in result.errors:
        print(f"skipped: {err}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Top-k classes of each video file; unreadable files get an error line and do not stop the others."""
    from .engine.inputs import stream_predictions
    from .engine.predict import load_run

    try:
        run = load_run(args.checkpoint, _precision(args.precision))
        compressed = run.cfg.data.input == "compressed"  # one TSN clip per video
        k, s = _views(args.views or ("1x3" if compressed else "4x3"))
    except ValueError as err:
        print(f"videoformer predict: {err}", file=sys.stderr)
        return 2
    if args.window is not None or args.stride is not None:
        return _predict_timelines(args, run)
    failed = False
    for r in stream_predictions(run, args.videos, k, s, args.topk):
        failed |= "error" in r
        if args.json:
            print(json.dumps(r, allow_nan=False))
        elif "error" in r:
            print(f"{r['path']}: error: {r['error']}", file=sys.stderr)
        else:
            preds = "; ".join(f"{head}: " + ", ".join(f"{p['class']} {p['score']:.3f}" for p in ps)
                              for head, ps in r["predictions"].items())
            print(f"{r['path']}: {preds}")
    return 1 if failed else 0


def _predict_timelines(args: argparse.Namespace, run) -> int:
    """``predict --window/--stride``: a timeline (JSON, CSV, PNG) of sliding-window scores per video."""
    from .data import VideoReadError
    from .engine.inputs import expand_videos
    from .engine.timeline import check_window, timeline, write_timeline

    try:
        check_window(args.window, args.stride)
        k, s = _views(args.views) if args.views else (1, 1)
        if k != 1:
            raise ValueError(f"--window scores one clip per window; use --views 1x{s}")
    except ValueError as err:
        print(f"videoformer predict: {err}", file=sys.stderr)
        return 2
    failed, stems = False, set()
    for path in expand_videos(args.videos):
        try:
            tl = timeline(run, path, args.window, args.stride, s)
        except (VideoReadError, ValueError, OSError) as err:  # missing, unreadable, non-finite scores
            failed = True
            print(f"{path}: error: {err}", file=sys.stderr)
            continue
        stem, n = Path(path).stem, 1
        while stem in stems:  # two videos named alike in one call
            stem, n = f"{Path(path).stem}-{n}", n + 1
        stems.add(stem)
        files = write_timeline(tl, args.out, args.topk, stem)
        if args.json:
            print(json.dumps(tl.to_dict(args.topk), allow_nan=False))
        else:
            print(f"{path}: {len(tl.windows)} windows of {tl.window:g} s every {tl.stride:g} s -> "
                  f"{', '.join(map(str, files))}")
        for err in tl.errors:
            print(f"{path}: skipped {err}", file=sys.stderr)
    return 1 if failed else 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Read a pretrained checkpoint (format from its contents) and write a self-describing videoformer directory."""
    import yaml

    from .weights import load_pretrained, save_pretrained

    try:
        overrides = {}
        for item in args.overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ValueError(f"override {item!r}: expected key=value, e.g. num_frames=16")
            overrides[key] = yaml.safe_load(raw)
        classes = None
        if args.classes:
            classes = [line.strip() for line in open(args.classes, encoding="utf-8") if line.strip()]
        model = load_pretrained(args.source, args.model, **overrides)
        out = save_pretrained(model, args.out_dir, classes)
    except (ValueError, OSError) as err:
        print(f"videoformer convert: {err}", file=sys.stderr)
        return 2
    print(f"{model.registry_name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params) -> {out}")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    """Attention-rollout PNG overlays of one video (MM-ViT: I-frame / MV / residual rows and an audio strip)."""
    from .analysis.rollout import rollout_video

    try:
        if os.path.exists(args.model):  # a run directory, a checkpoint, any source load_pretrained reads
            from .engine.predict import load_run, rollout_run

            if args.weights or args.frames or args.size or args.num_classes:
                raise ValueError("--weights / --frames / --size / --num-classes apply to a registered model name; "
                                 f"{args.model} brings its own weights and sizes")
            paths = rollout_run(load_run(args.model, checkpoint=args.checkpoint), args.video, args.out,
                                args.head_fusion)
        else:
            if args.weights is None:
                print("videoformer rollout: no --weights, the maps are those of a random initialisation",
                      file=sys.stderr)
            paths = rollout_video(args.model, args.video, args.out, args.weights, args.head_fusion,
                                  num_frames=args.frames, img_size=args.size, num_classes=args.num_classes)
    except (ValueError, OSError) as err:
        print(f"videoformer rollout: {err}", file=sys.stderr)
        return 2
    print("\n".join(paths))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """Re-encode a dataset to MPEG-4 (GOP 12, no B-frames) with audio features, atomically and resumably."""
    from .data.prepare import run_extract

    return run_extract(args)


def cmd_export(args: argparse.Namespace) -> int:
    """A run or pretrained model -> ONNX or a torch.export program, with preprocessing.json beside it."""
    from .engine.export import export_model

    try:
        result = export_model(args.source, args.out, args.format, args.dynamic_batch)
    except (ValueError, OSError) as err:  # ExportError, checkpoint / config errors, an unwritable OUT
        print(f"videoformer export: {err}", file=sys.stderr)
        return 2
    checked = ("" if result.max_abs_diff is None else
               f" (onnxruntime vs eager on a random clip: max |diff| {result.max_abs_diff:.1e})")
    print(f"{result.model_file}{checked}")
    print(result.preprocessing_file)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    """Pre-logits embeddings of every clip window of a dataset's videos (safetensors + index.csv), resumable."""
    from .engine.features import extract_features

    try:
        res = extract_features(args.source, args.dataset, args.out, args.window, args.stride, workers=args.workers)
    except (ValueError, OSError) as err:  # bad source, dataset (ExtractError), window; OUT unwritable
        print(f"videoformer features: {err}", file=sys.stderr)
        return 2
    print(f"{res.root}: {res.done} videos computed, {res.reused} reused, {len(res.failed)} failed -> {res.index}")
    for path, err in res.failed[:20]:
        print(f"  failed: {path}: {err}", file=sys.stderr)
    return 1 if res.failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Build the synthetic action dataset, train the tiny models, write report.md."""
    from .engine.demo import main as demo_main

    return demo_main(["--out", args.out] + (["--quick"] if args.quick else []))


PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_HELP = ("autocast of the forward pass (eval.precision; default: train.precision); bf16 is faster on "
                  "GPUs and on CPUs with AVX512-BF16 / AMX (benchmarks/README.md); fp16 needs a GPU")


def add_extract_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``videoformer extract`` (here, not in ``data.prepare``, so building the parser stays cheap)."""
    p.add_argument("dataset", help="a dataset folder (every video below it, and its split / annotation files) "
                                   "or a CSV path,label[,start,end] (the videos it lists, inside its folder)")
    p.add_argument("out", help="output folder: the cache is OUT/<name of the dataset folder>, same layout, to use "
                               "as data.root with the dataset's format and splits")
    p.add_argument("--size", default="340x256", help="WIDTHxHEIGHT (MM-ViT / CoViAR: 340x256)")
    p.add_argument("--gop", type=int, default=12)
    p.add_argument("--qscale", type=int, default=2)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    return p


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

    ic = sub.add_parser("init-config", help="write a commented YAML config (every key, its default) for a model "
                        "and a data folder")
    ic.add_argument("model", help="registered model name (see `videoformer list`) or a recipe, e.g. "
                    "configs/small/temporal.yaml")
    ic.add_argument("--data", help="dataset folder holding train/<class>/<video> and val/<class>/<video>")
    ic.add_argument("--out", help="YAML file to write (default: print to stdout)")
    ic.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    ic.set_defaults(handler=cmd_init_config)

    tr = sub.add_parser("train", help="train a model from a YAML config (resumes from OUTPUT_DIR/checkpoints/last.pt)")
    tr.add_argument("config", help="YAML file, e.g. configs/small/temporal.yaml or one written by `videoformer "
                    "init-config`")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=0.01")
    tr.set_defaults(handler=cmd_train)

    ev = sub.add_parser("eval", help="multi-view testing of a run directory or checkpoint on its data.val split")
    ev.add_argument("run", help="run directory (uses checkpoints/best.pt, else last.pt) or a checkpoint file")
    ev.add_argument("--checkpoint", choices=("best", "last"), default="best",
                    help="of a run directory: best.pt (the epoch with the best validation top-1: optimistic on "
                         "that split) or last.pt (the final weights); default best")
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.val=test.csv")
    ev.add_argument("--views", help="KxS: K temporal clips x S spatial crops (1 or 3), e.g. 4x3 (default: eval.*)")
    ev.add_argument("--json", action="store_true", help="print one JSON object (top1, top5, mean_class_acc, ...)")
    ev.add_argument("--shuffle-frames", action="store_true", help="permute the frames of every view (MViT Table 9)")
    ev.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    ev.set_defaults(handler=cmd_eval)

    pr = sub.add_parser("predict", help="class scores of video files from a trained checkpoint")
    pr.add_argument("checkpoint", help="run directory or checkpoint file")
    pr.add_argument("videos", nargs="+", metavar="VIDEO", help="video files, folders (every video below), glob "
                    "patterns, or - to read paths from stdin as they come")
    pr.add_argument("--topk", type=int, default=5, help="classes shown per file (per head)")
    pr.add_argument("--views", help="KxS views whose scores are averaged per file (default 4x3; 1x3 for "
                    "compressed-domain runs)")
    pr.add_argument("--json", action="store_true", help="one JSON object per file (JSON lines)")
    pr.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    pr.add_argument("--window", type=float, metavar="SEC", help="slide windows of SEC seconds over each video and "
                    "write a timeline (JSON, CSV, PNG) to --out (default window: one clip's span)")
    pr.add_argument("--stride", type=float, metavar="SEC", help="seconds between window starts (default: --window)")
    pr.add_argument("--out", default="timeline", help="folder of the timelines (default ./timeline)")
    pr.set_defaults(handler=cmd_predict)

    cv = sub.add_parser("convert", help="a pretrained checkpoint (official release, Hugging Face, run) -> a "
                        "videoformer directory that load_pretrained and model.pretrained read with no other argument")
    cv.add_argument("source", help="checkpoint file (.pyth, .pth, ... recognised from the contents) or directory")
    cv.add_argument("out_dir", help="output directory (config.json + model.safetensors)")
    cv.add_argument("--model", help="registry name, where the file does not record it (e.g. tokenshift_b16)")
    cv.add_argument("--classes", help="text file of class names, one per line, in label order")
    cv.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config fields, e.g. num_frames=16")
    cv.set_defaults(handler=cmd_convert)

    ro = sub.add_parser("rollout", help="attention-rollout PNG overlays of a model on one video file")
    ro.add_argument("model", help="a run directory, a checkpoint (any file or directory load_pretrained reads) or "
                    "a registered model name (with --weights, else random weights), e.g. timesformer_b16_divided")
    ro.add_argument("video", help="video file (MM-ViT: an MPEG-4 re-encode without B-frames)")
    ro.add_argument("--out", default="rollout", help="output directory for the PNGs (default ./rollout)")
    ro.add_argument("--weights", help="state-dict file of the model (.safetensors / .pt); default: random init")
    ro.add_argument("--frames", type=int, help="frames per clip T (default: the model's)")
    ro.add_argument("--size", type=int, help="frame height = width S (default: the model's)")
    ro.add_argument("--num-classes", type=int, help="classifier outputs C, as in the weights (default: the model's)")
    ro.add_argument("--head-fusion", choices=("mean", "max"), default="mean", help="how heads are fused")
    ro.add_argument("--checkpoint", choices=("best", "last"), default="best", help="of a run directory (default best)")
    ro.set_defaults(handler=cmd_rollout)

    ex = add_extract_arguments(sub.add_parser("extract", help="prepare a dataset for the compressed-domain models"))
    ex.set_defaults(handler=cmd_extract)

    xp = sub.add_parser("export", help="a run or pretrained model -> ONNX or a torch.export program (+ "
                        "preprocessing.json)")
    xp.add_argument("source", help="run directory, checkpoint, or anything load_pretrained reads (convert's output, "
                    "a release file, a Hugging Face directory)")
    xp.add_argument("out", help="output folder: model.onnx or model.pt2, and preprocessing.json")
    xp.add_argument("--format", choices=("onnx", "exported-program"), default="onnx")
    xp.add_argument("--dynamic-batch", action="store_true", help="leave the batch axis free (default: batch 1)")
    xp.set_defaults(handler=cmd_export)

    fe = sub.add_parser("features", help="one pre-logits embedding per clip window of every video of a dataset")
    fe.add_argument("source", help="run directory, checkpoint, or anything load_pretrained reads")
    fe.add_argument("dataset", help="a folder (every video below it), a CSV path,label[,...] or one video file")
    fe.add_argument("out", help="output folder: <relative path>.safetensors per video, index.csv, features.json")
    fe.add_argument("--window", type=float, metavar="SEC", help="window length (default: one clip's span)")
    fe.add_argument("--stride", type=float, metavar="SEC", help="seconds between window starts (default: --window)")
    fe.add_argument("--workers", type=int, default=1, help="parallel processes, one model each (default 1)")
    fe.set_defaults(handler=cmd_features)

    de = sub.add_parser("demo", help="synthetic action dataset -> train tiny models -> measured report.md")
    de.add_argument("--out", default="demo_out", help="output folder (dataset, runs, report.md)")
    de.add_argument("--quick", action="store_true", help="a few videos and 2 epochs (for tests)")
    de.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``videoformer`` console script; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides written after an option (`convert SRC OUT --model M num_frames=16`)
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    tune_malloc()  # before the first tensor: activations reuse heap memory (videoformer/allocator.py)
    try:
        return args.handler(args)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which stops at a step boundary on its own)
        print(f"videoformer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
