"""The benchmark's quick mode keeps working (it times nothing that a test asserts)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT, run_python

pytestmark = pytest.mark.slow  # every test runs tests/benchmarks/speed.py

SPEC = importlib.util.spec_from_file_location("speed", ROOT / "tests" / "benchmarks" / "speed.py")
speed = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(speed)


def test_quick_benchmark_writes_its_tables(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """speed.py's main, here; its bare loop in a fresh process as the benchmark starts each
    variant, the other variants forked from the suite's warm Python (the same scripts and
    arguments, without the seconds of importing torch and Lightning in each)."""
    fresh_launch, launched = speed.launch, []

    def launch(command: list[str], log_path: Path) -> tuple[int, float]:
        launched.append(command)
        assert command[0] == sys.executable
        if command[2:4] == ["--worker", "bare"]:
            return fresh_launch(command, log_path)
        result = run_python(Path(command[1]), *command[2:], cwd=ROOT, env=None)
        log_path.write_text(result.stdout + result.stderr)
        assert result.returncode == 0, result.stdout + result.stderr
        return 0, 1.0  # no peak of its own: a fork shares its server's pages

    monkeypatch.setattr(speed, "launch", launch)
    argv = ["speed.py", "--quick", "--device", "cpu", "--data-dir", str(tiny_mnist)]
    monkeypatch.setattr(sys, "argv", [*argv, "--val-size", "64", "--out", str(tmp_path)])
    speed.main()
    assert len(launched) == 5  # the four variants and the step cost, each a process
    summary = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(summary["variants"]) == {"project", "bare", "floor", "recipe"}
    for variant in summary["variants"].values():
        assert variant["seconds_per_epoch"] > 0 and variant["wall_seconds"] > 0
        assert 0 < variant["test_loss"] < 784 * 0.7  # per example, below a uniform guess
        assert variant["gflop_per_second"] > 0 and variant["startup_seconds"] > 0
    assert summary["variants"]["bare"]["peak_rss_mib"] > 100  # torch alone takes more
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
