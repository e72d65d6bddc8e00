"""The frame index on every awkward file kind: each frame identified by the barcode drawn into it.

Files are generated here with PyAV: variable frame rate (explicit timestamps), MPEG-4 Part 2 AVI with
B-frames (UCF-101 style), an MP4 trimmed by remuxing (edit list), Matroska / MP4 whose first video stream
is a cover picture, rotated (display matrix), a mid-stream resolution change, a long GOP with B-frames.
"""

from __future__ import annotations

import logging
import os

import av
import numpy as np
import pytest

from videoformer.data import video as video_mod
from videoformer.data.errors import VideoReadError
from videoformer.data.synthetic import (barcode_frames, read_barcode, remux_trimmed, write_resolution_change,
                                        write_video, write_with_cover)
from videoformer.data.video import FrameReader, clear_index_cache, frame_index, probe, read_all_frames, read_clip

N = 60
FRAMES = barcode_frames(N, 64, 96)
MS = np.concatenate([[0], np.cumsum(np.random.default_rng(3).choice([10, 40, 90], N - 1))])  # VFR times (ms)


def _codes(clip: np.ndarray) -> list[int]:
    return [read_barcode(f) for f in clip]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("kinds")
    f = {
        "vfr.mp4": write_video(d / "vfr.mp4", FRAMES, codec="libx264", gop=10, max_b_frames=2, pts_ms=MS),
        "vfr.mkv": write_video(d / "vfr.mkv", FRAMES, codec="libx264", gop=10, max_b_frames=2, pts_ms=MS),
        "bframes.avi": write_video(d / "bframes.avi", FRAMES, codec="mpeg4", gop=12, max_b_frames=2,
                                   bit_rate=3_000_000),
        "cfr.mp4": write_video(d / "cfr.mp4", FRAMES, codec="libx264", gop=10, max_b_frames=2),
        "longgop.mp4": write_video(d / "longgop.mp4", FRAMES, codec="libx264", gop=250, max_b_frames=3),
        "cover.mkv": write_with_cover(d / "cover.mkv", FRAMES),
        "cover.mp4": write_with_cover(d / "cover.mp4", FRAMES),
        "rot90.mp4": write_video(d / "rot90.mp4", np.ascontiguousarray(np.rot90(FRAMES, -1, axes=(1, 2))),
                                 rotation=90),
        "rot270.mkv": write_video(d / "rot270.mkv", np.ascontiguousarray(np.rot90(FRAMES, 1, axes=(1, 2))),
                                  rotation=270),
        "resize.ts": write_resolution_change(d / "resize.ts", [FRAMES[:30], barcode_frames(N, 96, 128)[30:]]),
    }
    f["trimmed.mp4"] = remux_trimmed(f["cfr.mp4"], d / "trimmed.mp4", start=15)
    return f


# file -> (frame count, content index of frame 0): frame i shows barcode first + i
KINDS = {"vfr.mp4": (N, 0), "vfr.mkv": (N, 0), "bframes.avi": (N, 0), "cfr.mp4": (N, 0), "longgop.mp4": (N, 0),
         "cover.mkv": (N, 0), "cover.mp4": (N, 0), "rot90.mp4": (N, 0), "rot270.mkv": (N, 0),
         "resize.ts": (N, 0), "trimmed.mp4": (N - 15, 15)}
PATTERNS = [[0], [0, 1, 2], [7, 3, 3, 50, 0], list(range(0, 40, 4)), [44, 10, 11, 12, 13]]


@pytest.mark.parametrize("name", list(KINDS))
def test_every_frame_is_the_one_asked_for(files, name):
    path = files[name]
    n, first = KINDS[name]
    info = probe(path)
    assert info.num_frames == n
    everything = read_all_frames(path)
    assert everything.shape[0] == n and _codes(everything) == list(range(first, first + n))
    for pattern in PATTERNS:
        idx = np.minimum(np.array(pattern), n - 1)
        clip = read_clip(path, idx)
        assert _codes(clip) == (first + idx).tolist(), (name, pattern)
        np.testing.assert_array_equal(clip, everything[idx])  # bit-exact with decoding everything


def test_vfr_indexes_by_timestamps(files):
    for name in ("vfr.mp4", "vfr.mkv"):
        ix = frame_index(files[name])
        info = probe(files[name])
        assert info.vfr and info.num_frames == N
        np.testing.assert_allclose(ix.times(np.arange(N)), MS / 1000, atol=1e-3)
        assert info.fps == pytest.approx((N - 1) / (MS[-1] / 1000))
        # the frame shown at a time, not time x average fps
        for k in (5, 17, 41, 59):
            assert int(ix.index_at(MS[k] / 1000 + 0.001)) == k
    cfr = probe(files["cfr.mp4"])
    assert not cfr.vfr and cfr.fps == 25.0


def test_bframe_avi_frame_zero_and_timestamps_from_one(files):
    path = files["bframes.avi"]
    ix = frame_index(path)
    assert int(ix.pts[0]) == 1  # MPEG-4 Part 2 B-frames in AVI: presentation timestamps start at 1
    assert _codes(read_clip(path, [0])) == [0]
    assert _codes(read_clip(path, [0, 12, 24, 36])) == [0, 12, 24, 36]  # what multi-view evaluation asks


def test_edit_list_counts_only_shown_frames(files):
    path = files["trimmed.mp4"]
    with av.open(path) as c:  # the container holds the whole first GOP; the edit list hides 5 of its frames
        assert c.streams.video[0].frames == N - 10
    info = probe(path)
    assert info.num_frames == N - 15 and not info.num_frames_exact
    assert probe(path, exact=True).num_frames == N - 15


def test_seek_to_a_key_frame_lands_on_it(files):
    """In the trimmed MP4 the demuxer lands one GOP early when asked for a key frame's own timestamp; the
    reader learns the offset once and then lands on the key frame itself."""
    path = files["trimmed.mp4"]
    with FrameReader(path) as r:
        ix = r.index
        k = len(ix.key_id) - 2
        r._seek_key(k)
        assert r._pending is not None and r.index.key_of(r._packet_id(r._pending)) == k
        landed = r._land(int(ix.key_seek[k]) + (ix.seek_offset or 0))
        assert landed is not None and landed[0] == k


def _counting_seeks(monkeypatch) -> list[int]:
    seeks, orig = [], FrameReader._seek_key

    def seek(self, k):
        seeks.append(k)
        return orig(self, k)

    monkeypatch.setattr(FrameReader, "_seek_key", seek)
    return seeks


def test_no_seek_when_the_key_frame_is_next_and_nonref_frames_skipped(files, monkeypatch, decoded):
    seeks = _counting_seeks(monkeypatch)
    path = files["cfr.mp4"]  # key frames every 10
    keys = [int(k) for k in frame_index(path).key_pos]
    assert keys[:3] == [0, 10, 20]
    assert _codes(read_clip(path, [9, 10, 11])) == [9, 10, 11]
    assert len(seeks) == 1  # frame 10's key frame is the very next packet after frame 9's GOP
    seeks.clear()
    decoded.clear()
    path = files["longgop.mp4"]  # one GOP of 60 frames, B-frames nothing references
    assert _codes(read_clip(path, [50])) == [50]
    assert len(decoded) < 45  # unwanted non-reference frames are not decoded


def test_index_cached_so_a_sample_opens_the_file_once(files, monkeypatch):
    opened = []
    orig = video_mod.open_video
    monkeypatch.setattr(video_mod, "open_video", lambda p, **kw: opened.append(p) or orig(p, **kw))
    path = files["vfr.mkv"]
    clear_index_cache()
    probe(path)
    assert len(opened) == 1  # Matroska: indexed from packets, once
    opened.clear()
    for _ in range(3):
        probe(path)
        read_clip(path, [3, 30])
    assert len(opened) == 3  # one open per sample, by read_clip


def test_index_persisted_and_verified(files, tmp_path, monkeypatch):
    monkeypatch.setenv(video_mod.INDEX_DIR_ENV, str(tmp_path / "idx"))
    path = files["vfr.mkv"]
    clear_index_cache()
    built = frame_index(path)
    saved = list((tmp_path / "idx").glob("*.npz"))
    assert len(saved) == 1
    clear_index_cache()
    monkeypatch.setattr(video_mod, "_build_index", lambda *a: pytest.fail("rebuilt a persisted index"))
    loaded = frame_index(path)
    np.testing.assert_array_equal(loaded.pts, built.pts)
    np.testing.assert_array_equal(loaded.gop, built.gop)
    data = bytearray(saved[0].read_bytes())  # a flipped byte: the CRC rejects the file, the index is rebuilt
    data[len(data) // 2] ^= 0xFF
    saved[0].write_bytes(bytes(data))
    clear_index_cache()
    monkeypatch.undo()
    monkeypatch.setenv(video_mod.INDEX_DIR_ENV, str(tmp_path / "idx"))
    assert _codes(read_clip(path, [5, 40])) == [5, 40]


def test_sample_table_contradicted_by_packets_is_replaced(files):
    """An index read from the sample table is checked against every packet decoded."""
    path = files["cfr.mp4"]
    clear_index_cache()
    ix = frame_index(path)
    assert not ix.from_packets
    ix.pts = ix.pts + 1  # a table that does not describe the packets
    assert _codes(read_clip(path, [33, 34])) == [33, 34]
    assert frame_index(path).from_packets


def test_cover_picture_is_not_the_video(files, tmp_path):
    for name in ("cover.mkv", "cover.mp4"):
        with av.open(files[name]) as c:
            assert c.streams.video[0].codec_context.name == "mjpeg" or \
                c.streams.video[1].disposition & av.stream.Disposition.attached_pic
        assert probe(files[name]).codec == "h264"
    only = tmp_path / "only_cover.mp4"  # an attached picture and no video
    with av.open(str(only), "w") as out:
        s = out.add_stream("mjpeg", rate=1)
        s.width, s.height, s.pix_fmt = 16, 16, "yuvj420p"
        s.disposition = av.stream.Disposition.attached_pic
        f = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24").reformat(format="yuvj420p")
        for p in [*s.encode(f), *s.encode()]:
            out.mux(p)
    with pytest.raises(VideoReadError, match="attached picture") as e:
        probe(only)
    assert e.value.path == str(only)


def test_rotation_applied_upright(files):
    for name, rot in (("rot90.mp4", 90), ("rot270.mkv", 270)):
        info = probe(files[name])
        assert info.rotation % 360 in (rot, rot - 360) and (info.width, info.height) == (96, 64)
        clip = read_clip(files[name], [0, 25], short_side=32)
        assert clip.shape == (2, 32, 48, 3) and _codes(clip) == [0, 25]


def test_resolution_change_scaled_to_first_frame(files, caplog):
    path = files["resize.ts"]
    with av.open(path) as c:
        sizes = {(f.width, f.height) for f in c.decode(video=0)}
    assert sizes == {(96, 64), (128, 96)}
    with caplog.at_level(logging.WARNING, logger="videoformer.data.video"):
        clip = read_clip(path, [10, 40, 59])
    assert clip.shape == (3, 64, 96, 3) and _codes(clip) == [10, 40, 59]
    assert "resolution changes" in caplog.text and path in caplog.text


def test_short_clip_of_long_mp4_reads_a_few_gops_not_the_file(tmp_path):
    """Cost per sample depends on the clip: an MP4 is indexed from its sample table (no packet read) and a
    clip reads the GOPs it needs."""
    path = write_video(tmp_path / "long.mp4", barcode_frames(1500, 64, 96, seed=1), codec="libx264", gop=25,
                       options={"preset": "ultrafast"})
    size = os.path.getsize(path)
    io = "/proc/self/io"
    if not os.path.exists(io):
        pytest.skip("needs /proc/self/io")

    def read_bytes() -> int:
        return int(dict(line.split(": ") for line in open(io).read().splitlines())["rchar"])

    clear_index_cache()
    before = read_bytes()
    clip = read_clip(path, [700, 701, 1300])
    used = read_bytes() - before
    assert _codes(clip) == [700, 701, 1300]
    assert not frame_index(path).from_packets
    assert used < size / 5, f"read {used} of {size} bytes for a 3-frame clip"
