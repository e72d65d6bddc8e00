"""Every `videoformer` command in the README runs: the quickstart ("Train on your own videos") end to end, as
written, on a tiny generated folder; every other command line parses, names files that exist in the repository
and registered models, and its config loads (those train on Kinetics / UCF-101 paths that exist only on a user's
machine; `info` and `list` are run)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from engine_util import colour_clip
from videoformer.cli import build_parser, main
from videoformer.data.synthetic import write_video

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def commands(text: str) -> list[str]:
    """The `videoformer ...` lines of the fenced code blocks of ``text`` (comments after two spaces dropped)."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    lines = [re.split(r"\s{2,}#", line)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("videoformer ")]


def quickstart() -> str:
    return README.split("## Train on your own videos", 1)[1].split("\n## ", 1)[0]


def test_quickstart_runs_as_written(tmp_path: Path, monkeypatch, capsys) -> None:
    pytest.importorskip("matplotlib")  # rollout draws PNGs
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 1)):
        for label, name in enumerate(("open_door", "close_door")):
            (tmp_path / "my_videos" / split / name).mkdir(parents=True)
            for i in range(n):
                write_video(tmp_path / "my_videos" / split / name / f"{i + 1:04d}.mp4", colour_clip(label, rng, 16, 32))
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    lines = commands(quickstart())
    assert len(lines) >= 7 and lines[0].startswith("videoformer init-config")
    for line in lines:
        code = main(shlex.split(line)[1:] + (["train.progress=false"] if line.startswith("videoformer train") else []))
        assert code == 0, (line, capsys.readouterr().err)
    run = tmp_path / "runs" / "temporal_my_videos"
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name  # what the README says the run directory holds
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 30  # trained on to train.epochs=30
    assert list((tmp_path / "rollout").glob("*.png"))


def test_every_other_readme_command_parses() -> None:
    from videoformer.engine import load_config
    from videoformer.models import get_spec

    parser = build_parser()
    others = [c for c in commands(README) if c not in commands(quickstart())]
    assert others
    for line in others:
        argv = shlex.split(line)[1:]
        args, extra = parser.parse_known_args(argv)
        assert not extra or all("=" in e for e in extra), line
        if args.command == "train":
            assert (ROOT / args.config).is_file(), line
            load_config(ROOT / args.config, args.overrides)  # keys and values valid
        if args.command in ("info", "rollout") and not Path(args.model).suffix:
            get_spec(args.model)
        if args.command in ("list", "info"):
            assert main(argv) == 0, line
