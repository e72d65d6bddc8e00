"""Clip decoding against decord 0.6.0 (and torchcodec 0.13 when it loads), one run, one thread each.

    pip install -e ".[dev,bench]"
    python benchmarks/decoding.py [--rounds 5] [--clips 8] [--quick]

Every file kind of issue 11 is generated here with PyAV, each frame carrying its index as a barcode
(``videoformer.data.synthetic.barcode_frames``): H.264 GOP 250 with B-frames, H.264 GOP 12, 720p, VP9 .webm,
a 90 s video, MPEG-4 Part 2 .avi with B-frames (UCF-101 style), variable frame rate (.mkv), an MP4 trimmed by
remuxing (edit list). Patterns: TSN 8x1 (one random frame per segment), dense 16x4, 32 consecutive; ``--clips``
random clips per video x pattern, the same index lists for every library. H.264 files with B-frames use a fixed
B-frame pattern (x264 ``b-adapt=0``, as camcorders and broadcast encoders write): on this synthetic texture x264's
adaptive placement would otherwise pick almost only P-frames.

- Exactness: every frame each library returns is checked against its barcode ("frames right"); ours must also
  equal decoding every frame (``read_all_frames``) bit for bit.
- Speed: process CPU time (all three decode on one thread; CPU time does not count other processes), best of
  ``--rounds`` rounds, libraries alternating within a round. A clip is what a dataset does per sample: decord
  opens a ``VideoReader`` (which scans the file's packets), torchcodec a ``VideoDecoder`` (exact seek mode),
  ours ``read_clip`` with the frame index cached from an earlier sample (its one-off cost per file is reported
  apart: "index").
- Where our time goes: one more pass per cell, outside the timing, counts the packets our decoder is given, the
  frames it outputs (a skipped non-reference frame outputs none) and the CPU time inside ``avcodec`` decoding.
  "bound" = decord's time per clip / our decoder time per clip: the ratio we would reach if everything but
  decoding (opening, seeking, RGB conversion, Python) cost nothing; below 1.2x, the cell cannot reach 1.2x by
  anything but decoding fewer frames.

torchcodec needs FFmpeg's shared libraries; when it cannot load them, this script re-runs itself with
``LD_LIBRARY_PATH`` pointing at the copies bundled in PyAV's wheel (FFmpeg 8), and leaves it out if that fails.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from videoformer.data.sampling import dense_indices, uniform_indices
from videoformer.data.synthetic import barcode_frames, read_barcode, remux_trimmed, write_video
from videoformer.data import video as video_mod
from videoformer.data.video import clear_index_cache, frame_index, read_all_frames, read_clip

BITS = 12


def _torchcodec():
    try:
        from torchcodec.decoders import VideoDecoder

        return VideoDecoder
    except Exception:  # noqa: BLE001 - any load failure means "not available"
        return None


def _reexec_for_torchcodec() -> None:
    """Re-run with PyAV's bundled FFmpeg on LD_LIBRARY_PATH (under the sonames torchcodec looks for)."""
    if os.environ.get("_VF_BENCH_REEXEC") or _torchcodec() is not None:
        return
    import av

    libs = Path(av.__file__).parent.parent / "av.libs"
    if not libs.is_dir():
        return
    links = Path(tempfile.mkdtemp(prefix="vf_ffmpeg_"))
    for f in libs.glob("lib*.so*"):
        m = re.match(r"(lib(?:av\w+|sw\w+))-[0-9a-f]+\.so\.(\d+)", f.name)
        if m:
            (links / f"{m.group(1)}.so.{m.group(2)}").symlink_to(f)
    env = dict(os.environ, _VF_BENCH_REEXEC="1",
               LD_LIBRARY_PATH=os.pathsep.join([str(links), str(libs), os.environ.get("LD_LIBRARY_PATH", "")]))
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def make_videos(work: Path, quick: bool, only: list[str] | None = None) -> dict[str, str]:
    """The file kinds of issue 11 (smaller with ``--quick``; those whose name contains one of ``only``)."""
    s = 0.4 if quick else 1.0
    n = int(300 * s)

    def frames(t, h, w, seed=0):
        return barcode_frames(t, h, w, bits=BITS, seed=seed)

    fixed_b = {"preset": "fast", "x264-params": "b-adapt=0"}  # IBBP... as camcorders / broadcast encoders write
    vfr_ms = np.cumsum(np.random.default_rng(0).choice([20, 40, 60], n)) - 20
    makers = {
        "H.264 GOP 250 + B, 480x272": lambda: write_video(work / "gop250.mp4", frames(n, 272, 480), gop=250,
                                                          max_b_frames=3, options=fixed_b),
        "H.264 GOP 12, 480x272": lambda: write_video(work / "gop12.mp4", frames(n, 272, 480, 1), gop=12,
                                                     max_b_frames=2, options=fixed_b),
        "H.264 720p GOP 50": lambda: write_video(work / "hd.mp4", frames(int(120 * s), 720, 1280, 2), gop=50,
                                                 max_b_frames=2, options=fixed_b),
        "VP9 .webm 480x272": lambda: write_video(work / "vp9.webm", frames(n, 272, 480, 3), codec="libvpx-vp9",
                                                 gop=60, options={"deadline": "realtime", "cpu-used": "8"},
                                                 bit_rate=2_000_000),
        "H.264 90 s 320x180": lambda: write_video(work / "long.mp4", frames(int(2250 * s), 180, 320, 4), gop=250,
                                                  max_b_frames=3, options=fixed_b),
        "MPEG-4 .avi + B (UCF-101)": lambda: write_video(work / "ucf.avi", frames(int(180 * s), 240, 320, 5),
                                                         codec="mpeg4", gop=12, max_b_frames=2, bit_rate=2_000_000),
        "VFR .mkv 480x272": lambda: write_video(work / "vfr.mkv", frames(n, 272, 480, 6), gop=30, max_b_frames=2,
                                                pts_ms=vfr_ms, options=fixed_b),
        "edit-list .mp4 (trimmed)": lambda: remux_trimmed(
            write_video(work / "src25.mp4", frames(n + 15, 272, 480, 7), gop=25, max_b_frames=2, options=fixed_b),
            work / "trimmed.mp4", start=15),
    }
    return {k: make() for k, make in makers.items() if not only or any(o in k for o in only)}


def patterns(n: int, clips: int, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    return {
        "TSN 8x1": [uniform_indices(n, 8, train=True, rng=rng) for _ in range(clips)],
        "dense 16x4": [dense_indices(n, 16, 4, train=True, rng=rng) for _ in range(clips)],
        "32 consecutive": [dense_indices(n, 32, 1, train=True, rng=rng) for _ in range(clips)],
    }


def _cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def decoder_work(path: str, clip_list: list[np.ndarray]) -> tuple[float, float, float]:
    """Packets decoded, frames output and decoder CPU seconds per clip of ``read_clip`` (one instrumented pass)."""
    stats = np.zeros(3)
    plain = video_mod._decode_packet

    def counted(cc, packet):
        t = time.process_time()
        frames = plain(cc, packet)
        stats[:] += (packet is not None, len(frames), time.process_time() - t)
        return frames

    video_mod._decode_packet = counted
    try:
        for idx in clip_list:
            read_clip(path, idx)
    finally:
        video_mod._decode_packet = plain
    return tuple(stats / len(clip_list))


def run(rounds: int, clips: int, quick: bool, only: list[str] | None = None) -> list[str]:
    import decord

    decord.bridge.set_bridge("native")
    tc = _torchcodec()
    libs = {
        "ours": lambda p, idx: read_clip(p, idx),
        "decord": lambda p, idx: decord.VideoReader(p, ctx=decord.cpu(0), num_threads=1).get_batch(
            list(idx)).asnumpy(),
    }
    if tc is not None:
        libs["torchcodec"] = lambda p, idx: tc(p, num_ffmpeg_threads=1, seek_mode="exact").get_frames_at(
            list(map(int, idx))).data.permute(0, 2, 3, 1).numpy()
    head = ["video", "pattern", "ours clips/s", "decord clips/s", "ours / decord"]
    head += ["torchcodec clips/s", "ours / torchcodec"] if tc is not None else []
    head += ["ours bit-exact", "frames right (ours / decord" + (" / torchcodec)" if tc is not None else ")"),
             "index (ms, once per file)", "ours: packets / frames decoded per clip", "ours decoder ms/clip",
             "bound (decord / ours decoder)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    with tempfile.TemporaryDirectory() as d:
        videos = make_videos(Path(d), quick, only)
        for name, path in videos.items():
            clear_index_cache()
            index_ms = 1000 * _cpu(lambda: frame_index(path))
            n = frame_index(path).num_frames
            first = read_barcode(read_all_frames(path)[0], BITS)
            ref = read_all_frames(path)
            for pname, clip_list in patterns(n, clips, np.random.default_rng(0)).items():
                right = {k: "yes" for k in libs}
                exact = True
                for idx in clip_list:  # correctness, outside the timing
                    for lib, fn in libs.items():
                        try:
                            got = fn(path, idx)
                        except Exception as e:  # noqa: BLE001 - a library failing on a file is a result
                            right[lib] = f"**raises** {type(e).__name__}"
                            continue
                        if [read_barcode(f, BITS) for f in got] != (first + idx).tolist() and right[lib] == "yes":
                            right[lib] = "**NO**"
                        if lib == "ours":
                            exact &= bool(np.array_equal(got, ref[idx]))
                timed = {k: fn for k, fn in libs.items() if "raises" not in right[k]}
                best = {k: float("inf") for k in libs}
                for _ in range(rounds):
                    for lib, fn in timed.items():
                        best[lib] = min(best[lib], _cpu(lambda: [fn(path, idx) for idx in clip_list]))
                rate = {k: clips / v for k, v in best.items()}
                packets, decoded, dec_s = decoder_work(path, clip_list)

                def ratio(k: str) -> str:
                    return f"{rate['ours'] / rate[k]:.2f}x" if rate[k] > 0 else "-"

                cells = [name, pname, f"{rate['ours']:.1f}", f"{rate['decord']:.1f}", f"**{ratio('decord')}**"]
                if tc is not None:
                    cells += [f"{rate['torchcodec']:.1f}", ratio("torchcodec")]
                cells += ["yes" if exact else "**NO**", " / ".join(right[k] for k in libs), f"{index_ms:.0f}",
                          f"{packets:.0f} / {decoded:.0f}", f"{1000 * dec_s:.0f}", f"{1 / rate['decord'] / dec_s:.2f}x"]
                rows.append("| " + " | ".join(cells) + " |")
                print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="shorter videos (a smoke run)")
    p.add_argument("--only", nargs="+", help="only the videos whose name contains one of these")
    args = p.parse_args(argv)
    _reexec_for_torchcodec()
    print(f"{os.cpu_count()} CPUs; one decoding thread per library; best of {args.rounds} rounds (CPU time)\n")
    rows = run(args.rounds, args.clips, args.quick, args.only)
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
