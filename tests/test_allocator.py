"""tune_malloc: large blocks are reused from the heap instead of being page-faulted again on every allocation."""
import os
import platform
import subprocess
import sys

import pytest

from videoformer import allocator

FAULTS = """
import resource, torch
import torch.nn.functional as F
from videoformer.allocator import tune_malloc
print(tune_malloc())
torch.set_num_threads(1)
x, w1, w2 = torch.randn(1569, 768), torch.randn(3072, 768) * 0.02, torch.randn(768, 3072) * 0.02
def mlps(x):  # four ViT-B MLP blocks on 1569 tokens: 5-20 MB activations, freed as the next are made
    for _ in range(4):
        x = x + F.linear(F.gelu(F.linear(F.layer_norm(x, (768,)), w1)), w2)
    return x
mlps(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    mlps(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env: dict) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tuned_malloc_stops_refaulting_large_blocks():
    clean = {k: "" for k in allocator._USER_SETTINGS}
    applied, tuned = _faults({**clean, allocator.TUNE_ENV: "1"})
    skipped, default = _faults({**clean, allocator.TUNE_ENV: "0"})
    assert (applied, skipped) == ("True", "False")
    assert default > 20 * tuned  # measured: ~187,000 minor faults against ~3,500


def test_user_allocator_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert allocator.tune_malloc() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv(allocator.TUNE_ENV, "0")
    assert allocator.tune_malloc() is False
