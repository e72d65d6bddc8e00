"""Cost per sample on long inputs: it must depend on the clip, not on the length of the video (issue 9.15).

    python benchmarks/long_video.py [--minutes 60 10]

Writes, per length: an H.264 .mp4 (160x128, 25 fps, GOP 250, AAC audio), the same packets in Matroska, and an
MPEG-4 Part 2 + AAC .mp4 (GOP 12, what ``videoformer extract`` writes). Measures, in this process:

- ``read_clip`` of one 8-frame TSN clip, cold (no frame index yet) and warm: CPU seconds and bytes read
  (``/proc/self/io`` rchar) against the file size;
- Matroska ``probe``: the first (indexes the file from its packets, once) and the next ones (cached);
- one ``CompressedVideoDataset`` sample with audio and no log-mel cache: CPU seconds, bytes read and the peak
  memory of Python / numpy allocations (``tracemalloc``) during the sample.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from videoformer.data import CompressedVideoDataset, VideoRecord
from videoformer.data.sampling import uniform_indices
from videoformer.data.video import clear_index_cache, probe, read_clip


def write_long(path: Path, seconds: int, codec: str, gop: int, fps: int = 25) -> str:
    """A ``seconds``-long video of a drifting texture with a 220 Hz tone, streamed frame by frame."""
    h, w = 128, 160
    tex = np.random.default_rng(0).integers(0, 256, (h, w + 512, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.gop_size = gop
        if codec == "libx264":
            vs.codec_context.options = {"preset": "ultrafast"}
        else:
            vs.bit_rate = 400_000
        aus = out.add_stream("aac", rate=16000, layout="mono")
        for i in range(seconds * fps):
            x = (2 * i) % 512
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(tex[:, x : x + w]), format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        t = np.arange(seconds * 16000, dtype=np.float32) / 16000
        wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        rs = av.AudioResampler(format="fltp", layout="mono", rate=16000, frame_size=1024)
        src = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
        src.sample_rate, src.pts, src.time_base = 16000, 0, Fraction(1, 16000)
        for f in [*rs.resample(src), *rs.resample(None)]:
            out.mux(aus.encode(f))
        out.mux(aus.encode())
    return str(path)


def remux(src: str, dst: Path) -> str:
    with av.open(src) as inp, av.open(str(dst), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for p in inp.demux():
            if p.size:
                p.stream = streams[p.stream.index]
                out.mux(p)
    return str(dst)


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(dict(line.split(": ") for line in f.read().splitlines())["rchar"])


def _measure(fn) -> tuple[float, int]:
    r, t = _rchar(), time.process_time()
    fn()
    return time.process_time() - t, _rchar() - r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=int, nargs="+", default=[60, 10])
    args = p.parse_args(argv)
    rows = ["| video | size | measurement | CPU s | read | note |", "|---|---|---|---|---|---|"]

    def row(video, size, what, sec, nbytes, note=""):
        rows.append(f"| {video} | {size / 2**20:.0f} MB | {what} | {sec:.3f} | "
                    f"{nbytes / 2**20:.1f} MB ({nbytes / size:.1%}) | {note} |")
        print(rows[-1], flush=True)

    with tempfile.TemporaryDirectory() as d:
        for minutes in args.minutes:
            t0 = time.time()
            mp4 = write_long(Path(d) / f"h264_{minutes}m.mp4", minutes * 60, "libx264", 250)
            mkv = remux(mp4, Path(d) / f"h264_{minutes}m.mkv")
            mpeg4 = write_long(Path(d) / f"mpeg4_{minutes}m.mp4", minutes * 60, "mpeg4", 12)
            print(f"({minutes} min written in {time.time() - t0:.0f} s)", flush=True)
            name = f"{minutes} min"
            size = os.path.getsize(mp4)
            n = probe(mp4).num_frames
            clear_index_cache()
            idx = uniform_indices(n, 8, train=True, rng=np.random.default_rng(0))
            sec, nb = _measure(lambda: read_clip(mp4, idx))
            row(f"{name} H.264 .mp4", size, "8-frame TSN clip, cold (index from the sample table)", sec, nb)
            idx = uniform_indices(n, 8, train=True, rng=np.random.default_rng(1))
            sec, nb = _measure(lambda: read_clip(mp4, idx))
            row(f"{name} H.264 .mp4", size, "8-frame TSN clip, warm", sec, nb)
            size = os.path.getsize(mkv)
            clear_index_cache()
            sec, nb = _measure(lambda: probe(mkv))
            row(f"{name} H.264 .mkv", size, "first probe (indexes every packet, once)", sec, nb)
            sec, nb = _measure(lambda: [probe(mkv) for _ in range(10)])
            row(f"{name} H.264 .mkv", size, "10 more probes", sec, nb, "cached")
            sec, nb = _measure(lambda: read_clip(mkv, idx))
            row(f"{name} H.264 .mkv", size, "8-frame TSN clip, warm", sec, nb)
            size = os.path.getsize(mpeg4)
            ds = CompressedVideoDataset([VideoRecord(mpeg4, 0)], num_segments=8, train=True, seed=0)
            clear_index_cache()
            ds[0]  # index + numba kernels
            tracemalloc.start()
            sec, nb = _measure(lambda: ds[0])
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            row(f"{name} MPEG-4 .mp4", size, "CompressedVideoDataset sample, audio, no log-mel cache", sec, nb,
                f"peak Python / numpy memory {peak / 2**20:.0f} MB")
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
