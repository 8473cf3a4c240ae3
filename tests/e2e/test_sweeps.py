"""Sweeps and scale: joblib launcher, Optuna search, failed runs, sweep summary, DDP on CPU."""

import csv
import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from vaelab.data import MNISTDataModule

from ..conftest import TINY_RUN, run_script, run_train

pytestmark = pytest.mark.slow  # every test runs train.py -m


def jobs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())


def status(job: Path) -> str:
    return json.loads((job / "metrics.json").read_text())["status"]


def test_joblib_runs_two_jobs_in_parallel(tiny_mnist: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")  # the sweep extra
    result = run_train(
        "-m",
        "hydra/launcher=cpu_parallel",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path}",
        f"data.data_dir={tiny_mnist}",
        *TINY_RUN,
        "model/prior=standard,mog",
    )
    assert result.returncode == 0, result.stderr
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    assert [status(job) for job in jobs(tmp_path)] == ["completed", "completed"]
    # each job's torch takes its share of the cores (joblib sets OMP_NUM_THREADS in workers)
    threads = [
        json.loads((job / "metrics.json").read_text())["torch_threads"] for job in jobs(tmp_path)
    ]
    assert threads == [max(1, os.cpu_count() // 2)] * 2
    # a group's override names its job's folder without nesting it: model/prior -> model.prior
    names = [job.name for job in jobs(tmp_path)]  # the folders right below the sweep's
    assert (
        len(names) == 2 and "+model.prior-standard+" in names[0] and "+model.prior-mog+" in names[1]
    )


def test_optuna_search_records_trials_and_the_best(tiny_mnist: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")  # the sweep extra
    pytest.importorskip("optuna")
    result = run_train(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        f"hydra.sweep.dir={tmp_path}",
        f"data.data_dir={tiny_mnist}",
        *[o for o in TINY_RUN if not o.startswith("model.")],
        # a search space in which some trials fail: latent size 0 is refused
        "hydra.sweeper.params={model.latent_size: 'choice(0, 3)', hidden_width: 'choice(16, 32)',"
        " model.lr: 'choice(0.001)', model.beta: 'choice(1.0)'}",
    )
    assert result.returncode == 0, result.stderr
    runs = jobs(tmp_path)
    assert len(runs) == 3
    statuses = {job.name: status(job) for job in runs}
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_params"]["model.latent_size"] == 3
    completed = [
        json.loads((j / "metrics.json").read_text())
        for j in runs
        if statuses[j.name] == "completed"
    ]
    assert best["best_value"] == pytest.approx(min(c["best_val_loss"] for c in completed))
    for job in runs:  # failed trials are the ones with latent size 0, and Optuna was told
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert (statuses[job.name] == "failed") == ("model.latent_size=0" in overrides)
    if "failed" in statuses.values():
        assert "Failed experiment: " in result.stderr + result.stdout


def test_a_failed_run_does_not_sink_the_sweep_and_is_summarized(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    result = run_train(
        "-m",
        f"hydra.sweep.dir={tmp_path}",
        f"data.data_dir={tiny_mnist}",
        *TINY_RUN,
        "model.latent_size=3,0,2",
    )
    # every job ran; then Hydra's basic sweeper reports the failure and exits non-zero
    assert [status(job) for job in jobs(tmp_path)] == ["completed", "failed", "completed"]
    assert result.returncode != 0 and "latent_size=0 is invalid" in result.stderr
    failed = json.loads((jobs(tmp_path)[1] / "metrics.json").read_text())
    assert failed["status"] == "failed" and "latent_size=0 is invalid" in failed["reason"]

    summary = run_script("summarize", str(tmp_path))
    assert summary.returncode == 0, summary.stderr
    header, *rows = list(csv.reader((tmp_path / "summary.csv").open()))
    assert header[:5] == ["run", "status", "model.latent_size", "best_val_loss", "test/loss"]
    assert [row[1] for row in rows] == ["completed", "completed", "failed"]  # best first
    assert float(rows[0][3]) <= float(rows[1][3])
    assert rows[2][2] == "0" and "latent_size=0 is invalid" in rows[2][-1]
    assert (tmp_path / "summary.png").stat().st_size > 10_000
    assert "| failed |" in (tmp_path / "summary.md").read_text()
    assert "failed" in summary.stdout


def test_ddp_on_two_cpu_processes_sees_every_example_once(tiny_mnist: Path, tmp_path: Path) -> None:
    result = run_train(
        f"data.data_dir={tiny_mnist}",
        *TINY_RUN,
        "trainer.max_epochs=2",
        f"hydra.run.dir={tmp_path}",
        "hardware=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "+callbacks.record._target_=tests.helpers.RecordExamples",
        f"+callbacks.record.folder={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    data = MNISTDataModule(str(tiny_mnist), val_size=64)
    data.setup("fit")
    expected = sorted(hashlib.md5(row.numpy().tobytes()).hexdigest() for row in data.train_images)
    for epoch in (0, 1):
        shards = [
            json.loads((tmp_path / f"seen-epoch{epoch}-rank{r}.json").read_text()) for r in (0, 1)
        ]
        assert len(shards[0]) == len(shards[1]) == len(expected) // 2
        assert sorted(shards[0] + shards[1]) == expected  # each example once, across the ranks
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert len(list((tmp_path / "checkpoints").glob("epoch*.ckpt"))) == 1
