"""Long and untrimmed videos: ``predict --window/--stride`` timelines, ``features`` (resumable, parallel),
streaming ``predict`` input, and one preprocessing for predict, eval, timeline, features and the exported model."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_util import base_overrides, colour_clip, make_folder_dataset
from videoformer.cli import main as cli_main
from videoformer.data import read_clip
from videoformer.data.preprocessing import Preprocessing
from videoformer.data.sampling import dense_indices
from videoformer.data.synthetic import write_video
from videoformer.data.transforms import center_crop, normalize, short_side_scale
from videoformer.engine import load_config, train
from videoformer.engine.features import Settings, extract_features, load_features, video_features
from videoformer.engine.inputs import expand_videos
from videoformer.engine.predict import evaluate_run, load_run, predict_files
from videoformer.engine.timeline import sliding_windows, timeline, window_frames, Window
from videoformer.models import create_model


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A frame-wise ViT trained to tell the three tints apart (4 frames, stride 2)."""
    root = tmp_path_factory.mktemp("long")
    data = make_folder_dataset(root / "data")
    out = root / "run"
    train(load_config(None, base_overrides(data, out) + ["train.epochs=3"]))
    return out


@pytest.fixture(scope="module")
def untrimmed(tmp_path_factory) -> Path:
    """12 s at 25 fps: 4 s of tint 0, 4 s of tint 2, 4 s of tint 1."""
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("video") / "match.mp4"
    write_video(path, np.concatenate([colour_clip(c, rng, frames=100) for c in (0, 2, 1)]))
    return path


def test_sliding_windows() -> None:
    assert sliding_windows(10.0, 4.0, 3.0) == [Window(0, 4), Window(3, 7), Window(6, 10)]
    assert sliding_windows(2.5, 4.0, 1.0) == [Window(0.0, 2.5)]  # shorter than a window: all of it
    assert len(sliding_windows(600.0, 2.0, 0.5)) == 1197
    with pytest.raises(ValueError, match="positive"):
        sliding_windows(10.0, 0.0, 1.0)


def test_timeline_errors(run: Path, untrimmed: Path, tmp_path: Path, capsys) -> None:
    for bad in (["--window", "0"], ["--stride", "-1"], ["--window", "nan"], ["--window", "2", "--views", "2x1"]):
        assert cli_main(["predict", str(run), str(untrimmed), *bad, "--out", str(tmp_path)]) == 2
        assert "videoformer predict:" in capsys.readouterr().err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    assert cli_main(["predict", str(run), str(broken), str(untrimmed), "--window", "6", "--out",
                     str(tmp_path / "t")]) == 1  # the readable one is still done
    captured = capsys.readouterr()
    assert "broken.mp4: error:" in captured.err and "match.mp4: 2 windows of 6 s every 6 s" in captured.out
    with pytest.raises(ValueError, match="--stride"):
        extract_features(run, untrimmed, tmp_path / "f", stride=0.0)


def test_timeline_follows_the_segments(run: Path, untrimmed: Path, tmp_path: Path, capsys) -> None:
    assert cli_main(["predict", str(run), str(untrimmed), "--window", "2", "--stride", "1", "--topk", "2",
                     "--out", str(tmp_path)]) == 0
    assert "11 windows of 2 s every 1 s" in capsys.readouterr().out
    doc = json.loads((tmp_path / "match.timeline.json").read_text())
    assert doc["fps"] == 25.0 and doc["duration"] == 12.0 and (doc["window"], doc["stride"]) == (2.0, 1.0)
    starts = [w["start"] for w in doc["windows"]]
    assert starts == list(range(11))
    top1 = [w["predictions"]["class"][0]["class"] for w in doc["windows"]]
    inside = {0: "class0", 1: "class0", 2: "class0", 4: "class2", 5: "class2", 6: "class2", 8: "class1",
              9: "class1", 10: "class1"}  # windows entirely inside one tint
    assert {s: top1[s] for s in inside} == inside
    assert all(len(w["predictions"]["class"]) == 2 for w in doc["windows"])
    rows = (tmp_path / "match.timeline.csv").read_text().splitlines()
    assert rows[0] == "start,end,head,rank,class,score" and len(rows) == 1 + 11 * 2
    assert rows[1].startswith("0.000,2.000,class,1,class0,")
    png = (tmp_path / "match.timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_window_frames_cover_the_video(untrimmed: Path) -> None:
    wins = sliding_windows(12.0, 2.0, 1.0)
    frames = window_frames(str(untrimmed), wins)
    assert frames[0] == (0, 50) and frames[3] == (75, 125) and frames[-1] == (250, 300)


def test_streaming_inputs(run: Path, untrimmed: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.mp4", "sub/b.mkv"):
        write_video(folder / name, colour_clip(1, rng, frames=8))
    (folder / "notes.txt").write_text("not a video")
    assert list(expand_videos([str(folder)])) == [str(folder / "a.mp4"), str(folder / "sub" / "b.mkv")]
    assert list(expand_videos([str(folder / "**" / "*.mkv")])) == [str(folder / "sub" / "b.mkv")]
    assert list(expand_videos(["-", "x.mp4"], io.StringIO("one.mp4\n\n two.mp4 \n"))) == ["one.mp4", "two.mp4",
                                                                                         "x.mp4"]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{untrimmed}\n{tmp_path / 'missing.mp4'}\n"))
    assert cli_main(["predict", str(run), "-", str(folder), "--views", "1x1", "--json"]) == 1  # one missing
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [Path(l["path"]).name for l in lines] == ["match.mp4", "missing.mp4", "a.mp4", "b.mkv"]
    assert lines[1]["error"] == "file not found"
    assert lines[2]["predictions"]["class"][0]["class"] == "class1"


def test_features_resumable_and_parallel(run: Path, untrimmed: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    write_video(data / "short.mp4", colour_clip(2, rng, frames=30))
    (data / "sub" / "match.mp4").symlink_to(untrimmed)
    (data / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "features"
    assert cli_main(["features", str(run), str(data), str(out), "--window", "2", "--stride", "1"]) == 1
    captured = capsys.readouterr()
    assert "2 videos computed, 0 reused, 1 failed" in captured.out and "broken.mp4" in captured.err
    tensors, meta = load_features(out / "sub" / "match.mp4.safetensors")
    assert tensors["embedding"].shape == (11, 64) and tensors["embedding"].dtype == torch.float32
    assert tensors["start"].tolist() == list(range(11)) and tensors["end"].tolist() == list(range(2, 13))
    assert (meta["fps"], meta["window"], meta["stride"], meta["duration"]) == ("25.0", "2.0", "1.0", "12.0")
    index = (out / "index.csv").read_text().splitlines()
    assert index[0] == "video,file,num_windows,dim,fps,duration,window,stride"
    assert sorted(index[1:]) == ["short.mp4,short.mp4.safetensors,1,64,25.0,1.2,2.0,1.0",  # one window: all 1.2 s
                                 "sub/match.mp4,sub/match.mp4.safetensors,11,64,25.0,12.0,2.0,1.0"]
    summary = json.loads((out / "features.json").read_text())
    assert summary["dim"] == 64 and summary["videos"] == 2 and "broken.mp4" in summary["failed"][0][0]

    # a re-run keeps finished files; a deleted one is computed again, by two worker processes here
    before = (out / "short.mp4.safetensors").stat().st_mtime_ns
    (out / "sub" / "match.mp4.safetensors").unlink()
    (data / "broken.mp4").unlink()
    write_video(data / "other.mp4", colour_clip(0, rng, frames=30))
    res = extract_features(run, data, out, window=2.0, stride=1.0, workers=2, progress=False)
    assert (res.done, res.reused, res.failed) == (2, 1, [])
    assert (out / "short.mp4.safetensors").stat().st_mtime_ns == before
    again, _ = load_features(out / "sub" / "match.mp4.safetensors")
    torch.testing.assert_close(again["embedding"], tensors["embedding"], rtol=0, atol=1e-5)
    # other settings are other features: nothing reused
    res = extract_features(run, data, out, window=4.0, progress=False)
    assert (res.done, res.reused) == (3, 0)
    assert load_features(out / "sub" / "match.mp4.safetensors")[0]["embedding"].shape == (3, 64)


def test_one_preprocessing_everywhere(tmp_path: Path) -> None:
    """A model whose weights carry an unusual convention (mean / std, short side 40 -> crop 32, stride 3):
    predict, eval, a timeline window over the clip, its features through the head and the exported ONNX model
    fed by preprocessing.json alone give the same scores."""
    pytest.importorskip("onnxruntime")
    from videoformer.engine.export import export_model, onnx_outputs

    model = create_model("vivit_tiny_joint", num_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.2)
    model.preprocessing = Preprocessing(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), img_size=32, resize=40,
                                        num_frames=4, stride=3)
    model.classes = ["a", "b", "c"]
    weights = model.save_pretrained(tmp_path / "weights")
    clip = tmp_path / "clip.mp4"
    frames = np.random.default_rng(2).integers(0, 256, (17, 48, 64, 3), dtype=np.uint8)
    write_video(clip, frames, options={"crf": "0"})  # centre differs from the sides: the crop matters

    run = load_run(weights)
    assert run.model.preprocessing.short_side == 40 and run.model.preprocessing.stride == 3
    pred = predict_files(run, [str(clip)], 1, 1, topk=3)[0]["predictions"]["class"]
    scores = torch.tensor([next(p["score"] for p in pred if p["class"] == c) for c in "abc"])

    tl = timeline(run, clip, window=17 / 25)
    assert len(tl.windows) == 1
    torch.testing.assert_close(tl.scores[0][0], scores, rtol=0, atol=1e-6)

    z, *_ = video_features(run, clip, Settings(window=17 / 25))
    with torch.no_grad():
        torch.testing.assert_close(run.model.head(z).softmax(-1)[0], scores, rtol=0, atol=1e-6)

    exported = export_model(weights, tmp_path / "onnx", "onnx", check=False)
    doc = json.loads(exported.preprocessing_file.read_text())
    idx = dense_indices(17, doc["frames"], doc["stride"], train=False)
    x = torch.from_numpy(read_clip(clip, idx)).permute(3, 0, 1, 2)  # (3, T, H, W) uint8
    x = normalize(center_crop(short_side_scale(x, doc["short_side"]), doc["size"]), doc["mean"], doc["std"])
    logits, _ = onnx_outputs(exported.model_file, [x[None]])
    torch.testing.assert_close(logits.softmax(-1)[0], scores, rtol=0, atol=1e-5)

    best, worst = doc["classes"]["class"][int(scores.argmax())], doc["classes"]["class"][int(scores.argmin())]
    for label, top1 in ((best, 1.0), (worst, 0.0)):
        (tmp_path / "val.csv").write_text(f"path,label\nclip.mp4,{label}\n")
        evaluation = evaluate_run(load_run(weights, [f"data.root={tmp_path}", "data.format=csv",
                                                     "data.val=val.csv"]), 1, 1)
        assert evaluation.num_videos == 1 and evaluation.top1 == top1


def _readme_blocks() -> tuple[list[str], str]:
    """The shell commands and the Python snippet of README's export / features / long videos section."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text[text.index("## Export, features and long videos"):]
    section = section[: section.index("\n## ", 4)]
    blocks = section.split("```")[1::2]
    commands = [line for line in blocks[0].splitlines() if line.strip()]
    python = next(b for b in blocks if b.startswith("python"))[len("python"):]
    return commands, python


def test_readme_commands(run: Path, untrimmed: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Every command of the section, as written, in a folder holding the files it names."""
    import shlex
    import subprocess

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "colours").symlink_to(run)
    (tmp_path / "match.mp4").symlink_to(untrimmed)
    rng = np.random.default_rng(3)
    for name, tint in (("videos/a.mp4", 0), ("videos/b.mp4", 2), ("more/c.mp4", 1), ("data/short.mp4", 1)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write_video(tmp_path / name, colour_clip(tint, rng, frames=12))
    (tmp_path / "data" / "match.mp4").symlink_to(untrimmed)
    monkeypatch.chdir(tmp_path)
    commands, python = _readme_blocks()
    assert len(commands) == 6
    for line in commands:
        producer, _, command = line.rpartition("| ")
        argv = shlex.split(command)
        assert argv[0] == "videoformer", line
        if producer:
            listed = subprocess.run(producer, shell=True, capture_output=True, text=True, check=True).stdout
            monkeypatch.setattr("sys.stdin", io.StringIO(listed))
        capsys.readouterr()
        assert cli_main(argv[1:]) == 0, line
        out = capsys.readouterr().out
        if producer:
            assert sorted(Path(json.loads(l)["path"]).name for l in out.splitlines()) == ["a.mp4", "b.mp4"]
    assert {p.name for p in (tmp_path / "exported" / "onnx").iterdir()} == {"model.onnx", "preprocessing.json"}
    assert (tmp_path / "exported" / "program" / "model.pt2").is_file()
    assert (tmp_path / "timeline" / "match.timeline.png").is_file()
    exec(compile(python, "README.md", "exec"), {})
    assert (tmp_path / "features" / "index.csv").read_text().count("\n") == 3


def test_mmvit_directory_timeline_and_features(tmp_path: Path, capsys) -> None:
    """A pretrained MM-ViT directory reads the compressed domain with no override: windows of an MPEG-4 video."""
    rng = np.random.default_rng(4)
    video = tmp_path / "clip.mp4"
    write_video(video, np.concatenate([colour_clip(c, rng, frames=25) for c in (0, 1, 2)]), codec="mpeg4")
    create_model("mmvit_tiny_merged", num_classes=3, modalities=("iframe", "mv", "residual")).save_pretrained(
        tmp_path / "mm")
    assert cli_main(["predict", str(tmp_path / "mm"), str(video), "--window", "1", "--out", str(tmp_path)]) == 0
    assert "3 windows of 1 s every 1 s" in capsys.readouterr().out
    z, start, _, _ = video_features(load_run(tmp_path / "mm"), video, Settings(window=1.0))
    assert z.shape == (3, 64) and start.tolist() == [0.0, 1.0, 2.0]
