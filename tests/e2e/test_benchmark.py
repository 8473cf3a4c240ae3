"""The benchmark's quick mode keeps working (it times nothing that a test asserts)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.slow  # every test runs tests/benchmarks/speed.py


def test_quick_benchmark_writes_its_tables(tiny_mnist: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(ROOT / "tests" / "benchmarks" / "speed.py"),
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
    assert set(summary["variants"]) == {"project", "bare", "floor", "recipe"}
    for variant in summary["variants"].values():
        assert variant["seconds_per_epoch"] > 0 and variant["wall_seconds"] > 0
        assert 0 < variant["test_loss"] < 784 * 0.7  # per example, below a uniform guess
        assert variant["gflop_per_second"] > 0 and variant["startup_seconds"] > 0
    assert set(summary["ratios"]) >= {
        "project/bare seconds per epoch",
        "project/bare wall",
        "project/floor seconds per epoch",
        "recipe/project seconds per epoch",
    }
    # 784-400-(20+20) and 20-400-784: 1,302,400 FLOP forward, 3,280,000 for a training image
    assert summary["matmul_mflop_per_training_step"] == pytest.approx(128 * 3_280_000 / 1e6)
    cost = summary["step_cost"]  # 2 epochs of 2 steps (256 images, 128 a batch): 3 gaps
    assert cost["steps"] == 3 and cost["lightning_ms"] > 0 and cost["bare_ms"] > 0
    assert "| project |" in (tmp_path / "benchmark.md").read_text()
