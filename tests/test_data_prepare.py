"""``videoformer extract``: the cache keeps the dataset's layout (UCF-101 split files still find their videos),
extractions of train and val never overwrite each other, every cached file is checksummed and verified on
reuse and on read, workers die with a SIGKILLed parent and stale temporary files are removed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from videoformer.data.annotations import read_csv, read_folder
from videoformer.data.datasets import CompressedVideoDataset
from videoformer.data.errors import CacheError, ExtractError
from videoformer.data.prepare import (PrepareConfig, cached_logmel, extract_dataset, logmel_path, meta_path,
                                      verify_cached)
from videoformer.data.synthetic import moving_square_frames, tone, write_video
from videoformer.fileio import temp_path

SMALL = PrepareConfig(width=64, height=48)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clip")
    return write_video(d / "a.mp4", moving_square_frames(16, 48, 64, size=12), fps=10, audio=tone(1.6))


def _put(src: Path, root: Path, *rels: str) -> Path:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
    return root


@pytest.fixture()
def dataset(clip, tmp_path):
    root = _put(clip, tmp_path / "ds", "jump/x.mp4", "jump/y.mp4", "run/z.mp4")
    (root / "run" / "broken.mp4").write_bytes(b"garbage" * 50)
    return root


def _flip_byte(path: Path) -> None:
    """Same size, one byte changed: only a checksum sees it."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _manifest(root: Path) -> list[str]:
    return (root / "manifest.csv").read_text().splitlines()[1:]


def test_extract_resumes_verifies_and_repairs(dataset, tmp_path):
    res = extract_dataset(dataset, tmp_path / "out", SMALL, workers=2, progress=False)
    assert res.done == 3 and res.reused == 0 and len(res.failed) == 1 and "broken.mp4" in res.failed[0][0]
    assert res.root == tmp_path / "out" / "ds"  # the dataset's name, its layout below
    cached = read_folder(res.root)
    assert len(cached) == 3 and cached.classes == ["jump", "run"] and [r.label for r in cached.records] == [0, 0, 1]
    with av.open(cached.records[0].path) as c:
        assert c.streams.video[0].codec_context.name == "mpeg4" and c.streams.audio
    assert not [p for p in res.root.rglob("*") if ".tmp" in p.name]  # no temporary files left behind
    assert len(_manifest(res.root)) == 3
    # other parameters never mix with these
    with pytest.raises(ExtractError, match="made with --size 64x48 --gop 12 --qscale 2.*another OUT"):
        extract_dataset(dataset, tmp_path / "out", PrepareConfig(width=64, height=48, gop=6), progress=False)
    # resume: nothing to do
    again = extract_dataset(dataset, tmp_path / "out", SMALL, progress=False)
    assert again.done == 0 and again.reused == 3
    # an interrupted write (video without its record), a truncated file and a same-size flipped byte are redone
    x, y, z = (Path(r.path) for r in cached.records)
    meta_path(x).unlink()
    with open(y, "r+b") as f:
        f.truncate(100)
    _flip_byte(z)
    for damaged in (y, z):
        with pytest.raises(CacheError, match=rf"{damaged}: damaged cache file .*repair: videoformer extract "
                                             rf"{dataset} {tmp_path / 'out'} --size 64x48"):
            verify_cached(damaged)
    fixed = extract_dataset(dataset, tmp_path / "out", SMALL, progress=False)
    assert fixed.done == 3 and fixed.repaired == 2 and fixed.reused == 0
    for r in cached.records:
        verify_cached(r.path)
    assert len(_manifest(res.root)) == 3


def test_extract_cli(dataset, tmp_path, capsys):
    from videoformer.cli import main as videoformer

    code = videoformer(["extract", str(dataset), str(tmp_path / "o"), "--size", "64x48", "--workers", "1"])
    out = capsys.readouterr()
    assert code == 1 and "3 encoded" in out.out and "broken.mp4" in out.err
    assert f"use data.root={tmp_path / 'o' / 'ds'}" in out.out


def test_extract_without_videos_is_an_error(tmp_path, capsys):
    from videoformer.cli import main as videoformer

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no videos here")
    assert videoformer(["extract", str(tmp_path / "notes"), str(tmp_path / "o")]) == 2
    assert "notes: no video files" in capsys.readouterr().err
    assert videoformer(["extract", str(tmp_path / "mistyped"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "mistyped: not found" in err and "Traceback" not in err
    _put(tmp_path / "notes" / "readme.txt", tmp_path / "two", "a/x.avi", "a/x.mkv")
    with pytest.raises(ExtractError, match=r"x.mkv: and .*x.avi would both be cached as .*x.mp4"):
        extract_dataset(tmp_path / "two", tmp_path / "o", SMALL, progress=False)


def test_train_then_val_never_overwrite_and_manifest_merges(clip, tmp_path):
    """Issue 9.4: names come from the relative path, so val never lands on train's files; CSV extractions of
    one folder share one cache whose manifest grows."""
    data = _put(clip, tmp_path / "data", "train/jump/000.mp4", "train/run/000.mp4", "val/jump/000.mp4")
    val_video = data / "val" / "jump" / "000.mp4"
    write_video(val_video, moving_square_frames(12, 48, 64, size=8, seed=3), fps=10)  # another video
    out = tmp_path / "out"
    extract_dataset(data / "train", out, SMALL, progress=False)
    before = {p: p.read_bytes() for p in (out / "train").rglob("*.mp4")}
    extract_dataset(data / "val", out, SMALL, progress=False)
    assert {p: p.read_bytes() for p in (out / "train").rglob("*.mp4")} == before and len(before) == 2
    assert json.loads(meta_path(out / "val" / "jump" / "000.mp4").read_text())["source"] == str(val_video)
    assert len(_manifest(out / "train")) == 2 and len(_manifest(out / "val")) == 1
    # CSV datasets: both lists are in data/, so both extractions merge into out2/data
    (data / "train.csv").write_text("path,label\ntrain/jump/000.mp4,jump\ntrain/run/000.mp4,run\n")
    (data / "val.csv").write_text("path,label\nval/jump/000.mp4,jump\n")
    extract_dataset(data / "train.csv", tmp_path / "out2", SMALL, progress=False)
    res = extract_dataset(data / "val.csv", tmp_path / "out2", SMALL, progress=False)
    assert res.root == tmp_path / "out2" / "data" and res.done == 1
    assert [row.split(",")[0] for row in _manifest(res.root)] == ["train/jump/000.mp4", "train/run/000.mp4",
                                                                   "val/jump/000.mp4"]
    val = read_csv(res.root / "val.csv")  # the copied list, read in the cache: finds the cached val video
    assert [r.path for r in val.records] == [str(res.root / "val" / "jump" / "000.mp4")]


def test_damaged_cache_is_skipped_on_read_with_the_repair_command(dataset, tmp_path, caplog):
    """Issue 9.5: a flipped byte in a cached video or log-mel makes the sample unreadable, skipped and counted."""
    res = extract_dataset(dataset, tmp_path / "out", SMALL, progress=False)
    records = read_folder(res.root).records
    video, other = Path(records[0].path), Path(records[1].path)
    verify_cached(video)  # verified once in this process: a later change of the file is still seen
    _flip_byte(video)
    _flip_byte(logmel_path(other))
    with pytest.raises(CacheError, match=rf"{other.stem}.logmel.npy: damaged cache file.*repair: videoformer "
                                         "extract"):
        cached_logmel(other)
    ds = CompressedVideoDataset(records, num_segments=2, train=False, min_attempts=100)
    with pytest.raises(CacheError, match=rf"{video}: damaged cache file"):
        ds.load(0)
    with pytest.raises(CacheError):
        ds.load(1)  # the audio of this one is damaged
    sample = ds[0]  # skipped, replaced, counted
    assert ds.stats.failures == 1 and sample["iframe"].shape[0] == 2
    assert "repair: videoformer extract" in caplog.text and str(video) in caplog.text
    assert CompressedVideoDataset(records[2:], num_segments=2, train=False).load(0)["has_audio"]
    fixed = extract_dataset(dataset, tmp_path / "out", SMALL, progress=False)
    assert fixed.repaired == 2 and fixed.reused == 1
    assert ds.load(0)["iframe"].shape[0] == ds.load(1)["iframe"].shape[0] == 2


def test_logmel_cache_matches_decoding(dataset, tmp_path):
    from videoformer.data.compressed import extract_compressed

    res = extract_dataset(dataset, tmp_path / "out", SMALL, progress=False)
    video = read_folder(res.root).records[0].path
    assert logmel_path(video).is_file() and cached_logmel(video)[0].shape[1] == 64
    with_cache = extract_compressed(video, num_segments=4)
    logmel_path(video).unlink()
    with pytest.raises(CacheError, match="missing"):  # the entry no longer verifies
        cached_logmel(video)
    meta_path(video).unlink()  # no longer a cache entry: the audio is decoded from the AAC track
    decoded = extract_compressed(video, num_segments=4)
    np.testing.assert_allclose(with_cache.audio_logmel, decoded.audio_logmel, atol=0.01)  # float16 cache
    assert with_cache.has_audio and np.abs(with_cache.audio).sum() > 0


def _ucf101(clip: Path, root: Path) -> Path:
    """A tiny UCF-101: <Class>/v_<Class>_gYY_cZZ.avi (MPEG-4 in AVI, one with audio) and ucfTrainTestlist/."""
    classes = ["ApplyEyeMakeup", "Archery"]
    for k, name in enumerate(classes):
        for g in (1, 8):
            path = root / name / f"v_{name}_g{g:02d}_c01.avi"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_video(path, moving_square_frames(12, 48, 64, size=8, seed=k * 10 + g), fps=10, codec="mpeg4",
                        audio=tone(1.2) if g == 8 else None)
    sp = root / "ucfTrainTestlist"
    sp.mkdir()
    (sp / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    (sp / "trainlist01.txt").write_text("".join(f"{c}/v_{c}_g08_c01.avi {i + 1}\n" for i, c in enumerate(classes)))
    (sp / "testlist01.txt").write_text("".join(f"{c}/v_{c}_g01_c01.avi\n" for c in classes))
    return root


def test_mmvit_ucf101_workflow_reads_the_cache_with_the_same_settings(clip, tmp_path, capsys, monkeypatch):
    """Issue 9.16: the documented workflow, verbatim: `videoformer extract data/ucf101 data/mpeg4`, then
    configs/mmvit_iii_merged_ucf101.yaml with its own data settings (root data/mpeg4/ucf101, split files
    ucfTrainTestlist) builds the training set: the split files find the videos, the classes are kept."""
    from videoformer.cli import main as videoformer
    from videoformer.engine.config import load_config
    from videoformer.engine.train import prepare

    monkeypatch.chdir(tmp_path)
    src = _ucf101(clip, tmp_path / "data" / "ucf101")
    assert videoformer(["extract", "data/ucf101", "data/mpeg4", "--size", "64x48", "--workers", "1"]) == 0
    assert "4 encoded" in capsys.readouterr().out
    recipe = Path(__file__).resolve().parents[1] / "configs" / "mmvit_iii_merged_ucf101.yaml"
    assert "videoformer extract data/ucf101 data/mpeg4" in recipe.read_text()
    cfg = load_config(recipe, ["model.name=mmvit_tiny_merged", "model.num_frames=2", "model.img_size=32",
                               "model.pretrained=null", "data.audio_weights=", "data.num_workers=0",
                               f"output_dir={tmp_path / 'run'}"])
    cache = Path("data/mpeg4/ucf101")
    assert Path(cfg.data.root) == cache and cfg.data.format == "ucf101"
    assert (cache / "ucfTrainTestlist" / "trainlist01.txt").read_text() == (src / "ucfTrainTestlist" /
                                                                           "trainlist01.txt").read_text()
    setup = prepare(cfg, log=False)
    assert setup.classes == ["ApplyEyeMakeup", "Archery"]  # ucfTrainTestlist is never a class
    paths = [r.path for r in setup.train_set.records]
    assert paths == [str(cache / c / f"v_{c}_g08_c01.mp4") for c in setup.classes]
    assert [r.label for r in setup.val_set.records] == [0, 1]
    sample = setup.train_set[1]
    assert sample["iframe"].shape == (2, 3, 32, 32) and bool(sample["has_audio"]) and int(sample["label"]) == 1
    assert setup.train_set.stats.failures == 0


def test_split_root_extracts_both_splits(clip, tmp_path):
    from videoformer.engine.config import DataConfig
    from videoformer.engine.data import read_split

    data = _put(clip, tmp_path / "data", "train/a/0.mp4", "train/b/0.mp4", "val/a/0.mp4", "val/b/0.mp4")
    res = extract_dataset(data, tmp_path / "out", SMALL, progress=False)
    assert res.done == 4 and res.root == tmp_path / "out" / "data"
    cfg = DataConfig(format="folder", root=str(res.root), train="train", val="val")
    train, val = read_split(cfg, "train"), read_split(cfg, "val")
    assert train.classes == val.classes == ["a", "b"] and len(train) == len(val) == 2
    assert all(r.path.startswith(str(res.root / "val")) for r in val.records)


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) from /proc, None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _workers_of(pid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (_proc_state(int(d.name)) or ("", 0))[1] == pid:
            try:
                if b"spawn_main" in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_leaves_no_workers_and_the_next_run_cleans_up(clip, tmp_path):
    """Issue 9.11: SIGKILL of `extract --workers 2` ends its workers; stale temporary files are removed."""
    data = tmp_path / "data"
    for i in range(8):
        (data / "c").mkdir(parents=True, exist_ok=True)
        write_video(data / "c" / f"{i}.mp4", moving_square_frames(60, 96, 128, size=16, seed=i), fps=25)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "videoformer", "extract", str(data), str(out), "--workers", "2",
                             "--size", "128x96"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "data").rglob("*.extract.json")) and time.monotonic() < deadline:  # workers busy
            assert proc.poll() is None, "extraction ended before it could be killed"
            time.sleep(0.02)
        workers = _workers_of(proc.pid)
        assert len(workers) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any((_proc_state(w) or ("Z",))[0] != "Z" for w in workers):
        time.sleep(0.05)
    assert all((_proc_state(w) or ("Z",))[0] == "Z" for w in workers), "orphan workers still running"
    # temporary files: of a dead process (removed by the next run) and of a live one (kept)
    dead, running = subprocess.Popen(["true"]), subprocess.Popen(["sleep", "60"])
    dead.wait()
    stale, live = temp_path(out / "data" / "c" / "0.mp4", dead.pid), temp_path(out / "data" / "c" / "1.mp4", running.pid)
    stale.write_bytes(b"partial"), live.write_bytes(b"partial")
    try:
        res = extract_dataset(data, out, PrepareConfig(width=128, height=96), progress=False)
    finally:
        running.kill()
        running.wait()
    assert res.done + res.reused == 8 and not res.failed
    assert not stale.exists() and live.exists()
    assert [p.name for p in out.rglob("*") if ".tmp" in p.name] == [live.name]
