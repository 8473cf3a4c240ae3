"""The benchmark's quick mode keeps working (it times nothing that a test asserts)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow  # every test runs scripts/benchmark.py


def test_quick_benchmark_writes_its_tables(tiny_mnist: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(ROOT / "scripts" / "benchmark.py"),
        "--quick",
        "--device",
        "cpu",
        "--data-dir",
        str(tiny_mnist),
        "--val-size",
        "64",
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(summary["variants"]) == {"project", "bare", "recipe"}
    for variant in summary["variants"].values():
        assert variant["seconds_per_epoch"] > 0 and variant["wall_seconds"] > 0
        assert 0 < variant["test_loss"] < 784 * 0.7  # per example, below a uniform guess
    assert set(summary["ratios"]) >= {
        "project/bare seconds per epoch",
        "recipe/project seconds per epoch",
    }
    cost = summary["step_cost"]  # 2 epochs of 2 steps (256 images, 128 a batch): 3 gaps
    assert cost["steps"] == 3 and cost["lightning_ms"] > 0 and cost["bare_ms"] > 0
    assert "| project |" in (tmp_path / "benchmark.md").read_text()
