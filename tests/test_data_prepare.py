"""Dataset preparation cache: parallel re-encode, atomic + resumable, keyed by parameters, verified."""

from __future__ import annotations

import json
import shutil

import av
import pytest

from videoformer.data.annotations import read_folder
from videoformer.data.prepare import PrepareConfig, load_prepared, prepare
from videoformer.data.synthetic import moving_square_frames, tone, write_video


@pytest.fixture()
def dataset(tmp_path):
    src = write_video(tmp_path / "a.mp4", moving_square_frames(16, 48, 64, size=12), fps=10, audio=tone(1.6))
    root = tmp_path / "ds"
    for rel in ("jump/x.mp4", "jump/y.mp4", "run/z.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
    (root / "run" / "broken.mp4").write_bytes(b"garbage" * 50)
    return root


def test_prepare_resumes_and_verifies(dataset, tmp_path):
    ann = read_folder(dataset)
    cfg = PrepareConfig(width=64, height=48)
    res = prepare(ann.records, tmp_path / "out", cfg, workers=2, progress=False, classes=ann.classes)
    assert res.done == 3 and res.reused == 0 and len(res.failed) == 1 and "broken.mp4" in res.failed[0][0]
    assert res.out_dir.name == cfg.key and cfg.key != PrepareConfig(width=64, height=48, gop=6).key
    cached = load_prepared(res.out_dir)
    assert len(cached) == 3 and cached.classes == ["jump", "run"] and [r.label for r in cached.records] == [0, 0, 1]
    with av.open(cached.records[0].path) as c:
        assert c.streams.video[0].codec_context.name == "mpeg4" and c.streams.audio
    assert not list(res.out_dir.rglob(".*tmp*"))  # no temporary files left behind
    # resume: nothing to do
    again = prepare(ann.records, tmp_path / "out", cfg, workers=1, progress=False)
    assert again.done == 0 and again.reused == 3
    # an interrupted write (video without its JSON) and a damaged file are redone; verify drops them
    first = cached.records[0].path
    (res.out_dir / "videos" / (first.rsplit("/", 1)[1][:-4] + ".json")).unlink()
    second = cached.records[1].path
    with open(second, "r+b") as f:
        f.truncate(100)
    assert len(load_prepared(res.out_dir)) == 1
    meta = json.loads(open(cached.records[2].path[:-4] + ".json").read())
    with open(cached.records[2].path, "r+b") as f:  # same size, different bytes: caught by sha1
        f.seek(meta["size"] // 2)
        f.write(b"\x00" * 16)
    assert len(load_prepared(res.out_dir, verify="sha1")) == 0
    fixed = prepare(ann.records, tmp_path / "out", cfg, workers=1, progress=False)
    assert fixed.done == 2 and fixed.reused == 1
    assert len(load_prepared(res.out_dir)) == 3


def test_extract_cli(dataset, tmp_path, capsys):
    from videoformer.cli import main as videoformer

    code = videoformer(["extract", str(dataset), str(tmp_path / "o"), "--size", "64x48", "--workers", "1"])
    out = capsys.readouterr()
    assert code == 1 and "3 encoded" in out.out and "broken.mp4" in out.err


def test_logmel_cache_matches_decoding(dataset, tmp_path):
    import numpy as np

    from videoformer.data.compressed import extract_compressed
    from videoformer.data.prepare import cached_logmel, logmel_path

    ann = read_folder(dataset)
    res = prepare(ann.records[:1], tmp_path / "out", PrepareConfig(width=64, height=48), progress=False)
    video = load_prepared(res.out_dir).records[0].path
    assert logmel_path(video).is_file() and cached_logmel(video)[0].shape[1] == 64
    with_cache = extract_compressed(video, num_segments=4)
    logmel_path(video).unlink()  # now decoded from the AAC track
    assert len(load_prepared(res.out_dir)) == 0  # the entry no longer verifies
    decoded = extract_compressed(video, num_segments=4)
    np.testing.assert_allclose(with_cache.audio_logmel, decoded.audio_logmel, atol=0.01)  # float16 cache
    assert with_cache.has_audio and np.abs(with_cache.audio).sum() > 0
