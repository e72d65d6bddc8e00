"""The synthetic action demo in --quick mode: real H.264 / MPEG-4 + AAC files whose classes need temporal order
or audio, every demo model trained and evaluated (plain and shuffled), and a report built from the numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from videoformer.data import probe, read_clip
from videoformer.data.audio import has_audio_stream
from videoformer.engine.demo import CLASSES, MODELS, render, run_demo


def test_order_only_pairs_have_the_same_frames_reversed() -> None:
    right, _ = render(0, np.random.default_rng(3))
    left, _ = render(1, np.random.default_rng(3))
    assert np.array_equal(right, left[::-1])
    low, low_audio = render(4, np.random.default_rng(5))
    high, high_audio = render(5, np.random.default_rng(5))
    assert np.array_equal(low, high) and not np.allclose(low_audio, high_audio)


def test_quick_demo_writes_a_measured_report(tmp_path: Path) -> None:
    report = run_demo(tmp_path, quick=True)
    video = tmp_path / "data" / "h264" / "train" / CLASSES[0] / "000.mp4"
    info = probe(video)
    assert info.num_frames == 24 and has_audio_stream(video)
    assert read_clip(video, np.arange(4)).shape == (4, 32, 32, 3)
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in rows] == [m.name for m in MODELS]
    for r in rows:
        assert r["num_videos"] == 2 * len(CLASSES) and r["skipped"] == 0
        assert 0.0 <= r["top1"] <= 1.0 and 0.0 <= r["shuffled_order_acc"] <= 1.0
    text = report.read_text()
    assert all(f"| {r['model']} |" in text for r in rows) and "## What the measurements show" in text
    assert "Order-only classes: frame-wise ViT" in text and "Audio-only classes" in text
    rollouts = [p for r in rows for p in r["rollouts"]]
    assert len(rollouts) == 3 * len(rows) and all(Path(p).stat().st_size > 1000 for p in rollouts)
    assert all(str(Path(p).relative_to(tmp_path)) in text for p in rollouts)
