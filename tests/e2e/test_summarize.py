"""scripts/summarize.py over a sweep of seeds: the table, and the mean and spread per setting."""

import json
import statistics
from pathlib import Path

import pytest
import yaml

from ..conftest import run_script

pytestmark = pytest.mark.slow  # every test runs scripts/summarize.py


def fake_run(folder: Path, overrides: list[str], metrics: dict, nll_iw: float) -> None:
    """A finished sweep job's folder as train.py and evaluate.py leave it."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    summary = {
        "status": "completed",
        "overrides": overrides,
        "wall_seconds": 10.0,
        "epochs": 10,
        "best_val_loss": metrics["test/loss"] + 1,
        "metrics": metrics,
    }
    (folder / "metrics.json").write_text(json.dumps(summary))
    evaluation = {"global_step": 100, "metrics": {"test/nll_iw": nll_iw, "test/active_units": 20}}
    (folder / "evaluations").mkdir()
    (folder / "evaluations" / "epoch=9-step=100.json").write_text(json.dumps(evaluation))


def test_a_sweep_over_seeds_gets_each_settings_mean_and_spread(tmp_path: Path) -> None:
    losses = {"standard": [106.05, 105.83, 105.93], "vamp": [101.0, 101.5, 102.5]}
    for prior, values in losses.items():
        for seed, loss in enumerate(values):
            metrics = {"test/loss": loss, "test/recon": loss - 25, "test/kl": 25.0}
            overrides = [f"model/prior={prior}", f"seed={seed}"]
            fake_run(tmp_path / f"{prior}-{seed}", overrides, metrics, nll_iw=loss - 5)
    result = run_script("summarize", str(tmp_path))
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "summary.md").read_text()
    assert "test/nll_iw" in markdown.splitlines()[0]  # evaluate.py's figures are columns too
    table = markdown.split("Mean (standard deviation) over seeds:")[1]
    header, _, *lines = [line for line in table.splitlines() if line.startswith("|")]
    assert header.startswith("| model/prior | seeds | best_val_loss | test/loss |")
    for prior, values in losses.items():
        (line,) = [line for line in lines if line.startswith(f"| {prior} |")]
        mean, spread = statistics.mean(values), statistics.stdev(values)
        assert f"| 3 | {mean + 1:.2f} ({spread:.2f}) | {mean:.2f} ({spread:.2f}) |" in line
        assert f"| {mean - 5:.2f} ({spread:.2f}) |" in line  # test/nll_iw
    assert "over seeds" in result.stdout
