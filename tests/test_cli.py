"""The ``videoformer`` command line: ``info`` (plain and JSON) and ``list``."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from videoformer.cli import main


def test_info_json_reproduces_vivit_table2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "vivit_b16x2_fe", "--frames", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert set(out) == {"model", "params", "gmacs", "input"}
    assert out["model"] == "vivit_b16x2_fe" and out["input"] == [3, 32, 224, 224]
    assert abs(out["params"] / 1e6 - 115.1) <= 0.005 * 115.1  # ViViT Table 2, model 2
    assert abs(out["gmacs"] - 284.4) <= 0.02 * 284.4


def test_info_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "vivit_tiny_joint", "--frames", "8", "--size", "48", "--num-classes", "7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input"] == [3, 8, 48, 48]
    assert main(["info", "vivit_tiny_joint", "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["input"] == [3, 4, 32, 32] and default["gmacs"] < out["gmacs"]
    assert default["params"] - out["params"] == (10 - 7) * 65 + (1 + 4 // 2 * 4 * 4) * 64 - (1 + 8 // 2 * 6 * 6) * 64


def test_info_plain_has_per_block_breakdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "vivit_b16x2_fe", "--frames", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("params") and "115.06 M" in line for line in lines)
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith(("blocks.", "temporal_blocks."))}
    assert len(rows) == 12 + 4
    assert rows["blocks.0"] == rows["blocks.11"] and float(rows["blocks.0"][1]) > 20  # GMACs of one block


def test_info_unknown_model_exits_2_with_close_match(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "vivit_b16_fe"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "vivit_b16x2_fe" in captured.err


def test_info_invalid_size_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "vivit_b16x2_fe", "--frames", "33"]) == 2
    assert "num_frames=33" in capsys.readouterr().err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    assert "vivit_b16x2_fe" in capsys.readouterr().out.split()
    assert main(["list", "timesformer_b16_*"]) == 0
    assert capsys.readouterr().out.split() == [
        "timesformer_b16_axial", "timesformer_b16_divided", "timesformer_b16_joint",
        "timesformer_b16_local_global", "timesformer_b16_space",
    ]
    assert main(["list", "tiny_fe"]) == 0  # a plain word matches as a substring
    assert capsys.readouterr().out.split() == ["vivit_tiny_fe"]
    assert main(["list", "no_such_model"]) == 1


def test_module_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "videoformer.cli", "info", "timesformer_tiny_divided", "--json"],
                          capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["model"] == "timesformer_tiny_divided"
