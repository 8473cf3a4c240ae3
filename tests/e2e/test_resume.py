"""Runs you can trust: a resumed run keeps its logged record and trains as its config says,
and a run folder holds one run at a time."""

import csv
import hashlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaelab.checkpoints import find_checkpoint

from ..conftest import OFFLINE, ROOT, TINY_RUN, read_events, run_train

pytestmark = pytest.mark.slow

# Epochs of 8 steps (256 training images in batches of 32); last.ckpt only at an epoch's end.
RUN = [*TINY_RUN, "trainer.deterministic=true", "callbacks.last_checkpoint.every_n_train_steps=0"]
KILL_AT_18 = [  # in epoch 2, after the learning rate of its start was logged at step 16
    "+callbacks.kill._target_=tests.helpers.KillAtStep",
    "+callbacks.kill.step=18",
]


def train_in(run_dir: Path, data: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_train(f"data.data_dir={data}", *RUN, f"hydra.run.dir={run_dir}", *overrides)


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of the run's metrics.csv, each without its empty columns."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return [{key: value for key, value in row.items() if value} for row in csv.DictReader(file)]


def steps_of(rows: list[dict[str, str]], column: str) -> list[int]:
    return [int(row["step"]) for row in rows if row.get(column)]


def logged_lr(run_dir: Path) -> list[float]:
    return [event.value for event in read_events(run_dir).Scalars("lr-Adam")]


def digest(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cosine(epoch: int, epochs: int, lr: float = 1e-3) -> float:
    return lr * (1 + math.cos(math.pi * epoch / epochs)) / 2


# Item 3: a resumed run appends to what its loggers wrote.


def test_csv_and_tensorboard_keep_the_record_and_drop_what_the_crash_repeats(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """Killed in epoch 2 (last.ckpt at step 16), resumed: the rows and events before step 16
    stay as they were, and what the killed run logged from step 16 on is not there twice."""
    flush = "+logger.csv.flush_logs_every_n_steps=1"  # so that the kill leaves step 16's row
    first = train_in(
        tmp_path, tiny_mnist, "logger=many", "trainer.max_epochs=3", flush, *KILL_AT_18
    )
    assert first.returncode != 0
    before = [row for row in csv_rows(tmp_path) if int(row["step"]) < 16]
    assert steps_of(csv_rows(tmp_path), "lr-Adam") == [0, 8, 16]
    resumed = train_in(tmp_path, tiny_mnist, "logger=many", "trainer.max_epochs=3", "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    assert "Previous log files" not in resumed.stderr
    rows = csv_rows(tmp_path)
    assert [row for row in rows if int(row["step"]) < 16] == before
    assert steps_of(rows, "lr-Adam") == [0, 8, 16]
    assert steps_of(rows, "val/loss") == [7, 15, 23]
    assert steps_of(rows, "test/loss") == [24]
    events = read_events(tmp_path)
    assert [event.step for event in events.Scalars("lr-Adam")] == [0, 8, 16]
    val = events.Scalars("val/loss")
    assert [event.step for event in val] == [7, 15, 23]
    first_part = [float(row["val/loss"]) for row in before if "val/loss" in row]
    assert [event.value for event in val[:2]] == pytest.approx(first_part)


def test_mlflow_goes_on_with_the_folders_run(tiny_mnist: Path, tmp_path: Path) -> None:
    """The same MLflow run gets the resumed epochs; a resume that changes a hyperparameter,
    which MLflow cannot record in that run, gets a new run nested under it."""
    pytest.importorskip("mlflow")  # the dev extra has it; a bare GPU machine may not
    from mlflow.tracking import MlflowClient

    assert train_in(tmp_path, tiny_mnist, "logger=mlflow", "trainer.max_epochs=1").returncode == 0
    resumed = train_in(tmp_path, tiny_mnist, "logger=mlflow", "trainer.max_epochs=2", "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("vaelab").experiment_id
    (run,) = client.search_runs([experiment])
    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert sorted(metric.step for metric in history) == [7, 15]
    assert run.data.tags["run_dir"] == str(tmp_path)

    changed = train_in(
        tmp_path,
        tiny_mnist,
        "logger=mlflow",
        "trainer.max_epochs=3",
        "resume=true",
        "model.lr=0.01",
    )
    assert changed.returncode == 0, changed.stderr
    runs = client.search_runs([experiment], order_by=["attributes.start_time DESC"])
    assert len(runs) == 2 and runs[0].data.tags["mlflow.parentRunId"] == run.info.run_id
    assert runs[0].data.params["lr"] == "0.01" and runs[1].data.params["lr"] == "0.001"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val/loss")] == [23]


def test_wandb_offline_goes_on_with_the_same_id(tiny_mnist: Path, tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    assert train_in(tmp_path, tiny_mnist, "logger=wandb", "trainer.max_epochs=1").returncode == 0
    (first,) = (tmp_path / "wandb").glob("offline-run-*")
    record = {path: digest(path) for path in first.rglob("*.wandb")}
    resumed = train_in(tmp_path, tiny_mnist, "logger=wandb", "trainer.max_epochs=2", "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and runs[0] == first
    assert len({run.name.rpartition("-")[2] for run in runs}) == 1  # one run id
    assert record and {path: digest(path) for path in record} == record  # the first part kept


# Item 4: what trains after a resume is what the config says (and what is logged).


@pytest.fixture(scope="module")
def cosine_run(tiny_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of 3 epochs on a cosine schedule: lr 1e-3, 7.5e-4, 2.5e-4."""
    run_dir = tmp_path_factory.mktemp("cosine")
    result = train_in(run_dir, tiny_mnist, "model/scheduler=cosine", "trainer.max_epochs=3")
    assert result.returncode == 0, result.stderr
    return run_dir


def resume_copy(run: Path, tmp_path: Path, data: Path, *overrides: str) -> Path:
    """Resume a copy of `run` with these overrides; return the copy's folder."""
    run_dir = Path(shutil.copytree(run, tmp_path / "run"))
    result = train_in(run_dir, data, "resume=true", *overrides)
    assert result.returncode == 0, result.stderr
    return run_dir


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def test_a_cosine_run_extended_follows_the_longer_curve(
    cosine_run: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    """Extended from 3 to 5 epochs (T_max=${trainer.max_epochs}), epochs 3 and 4 train on the
    5-epoch curve, as a 5-epoch run would; before, they trained at 0 and then 2.5e-4."""
    run_dir = resume_copy(
        cosine_run, tmp_path, tiny_mnist, "model/scheduler=cosine", "trainer.max_epochs=5"
    )
    expected = [cosine(e, 3) for e in range(3)] + [cosine(e, 5) for e in (3, 4)]
    assert logged_lr(run_dir) == pytest.approx(expected)
    assert min(logged_lr(run_dir)) > 0
    checkpoint = last_checkpoint(run_dir)
    assert checkpoint["hyper_parameters"]["scheduler"]["T_max"] == 5
    assert checkpoint["lr_schedulers"][0]["T_max"] == 5
    assert "resume: from epoch 3, as the config says: lr 0.0 -> 0.000345" in (
        (run_dir / "train.log").read_text()
    )


def test_a_new_lr_on_resume_is_the_lr_that_trains(
    cosine_run: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    """model.lr=0.1 with the same cosine schedule: epoch 3 of 4 at 0.1 * cosine(3 / 4)."""
    run_dir = resume_copy(
        cosine_run,
        tmp_path,
        tiny_mnist,
        "model/scheduler=cosine",
        "trainer.max_epochs=4",
        "model.lr=0.1",
    )
    assert logged_lr(run_dir)[3] == pytest.approx(cosine(3, 4, lr=0.1))
    checkpoint = last_checkpoint(run_dir)
    assert checkpoint["hyper_parameters"]["lr"] == 0.1
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 0.1


def test_no_scheduler_on_resume_trains_at_model_lr(
    cosine_run: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    """model/scheduler=none after cosine: the constant model.lr, not the cosine's last 0.0."""
    run_dir = resume_copy(cosine_run, tmp_path, tiny_mnist, "trainer.max_epochs=5")
    assert logged_lr(run_dir)[3:] == pytest.approx([1e-3, 1e-3])
    checkpoint = last_checkpoint(run_dir)
    assert checkpoint["lr_schedulers"] == [] and checkpoint["hyper_parameters"]["scheduler"] == {}


def test_another_optimizer_on_resume_is_refused_in_one_line(
    cosine_run: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    run_dir = Path(shutil.copytree(cosine_run, tmp_path / "run"))
    last = digest(run_dir / "checkpoints" / "last.ckpt")
    result = train_in(
        run_dir, tiny_mnist, "resume=true", "trainer.max_epochs=5", "model/optimizer=sgd"
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        "was trained with the optimizer torch.optim.Adam, and this run asks for torch.optim.SGD"
        in result.stderr
    )
    assert digest(run_dir / "checkpoints" / "last.ckpt") == last


# Item 8: a folder holds one run.


def test_a_new_run_into_a_folder_that_holds_a_run_is_refused(
    cosine_run: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    """Refused before Hydra writes its config into the folder; overwrite=true replaces the run."""
    run_dir = Path(shutil.copytree(cosine_run, tmp_path / "run"))
    kept = {name: digest(run_dir / name) for name in ("checkpoints/last.ckpt", "metrics.json")}
    kept[".hydra/overrides.yaml"] = digest(run_dir / ".hydra" / "overrides.yaml")
    result = train_in(run_dir, tiny_mnist, "model.latent_size=3")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"{run_dir} holds a run (checkpoints/, metrics.json")
    assert "resume=true" in message and "overwrite=true" in message
    assert {name: digest(run_dir / name) for name in kept} == kept

    replaced = train_in(run_dir, tiny_mnist, "model.latent_size=3", "overwrite=true")
    assert replaced.returncode == 0, replaced.stderr
    assert "overwrite=true: removed the earlier run's checkpoints/" in replaced.stdout
    best, _ = find_checkpoint(None, str(run_dir))  # one best checkpoint, as evaluate.py needs
    assert torch.load(best, weights_only=True)["hyper_parameters"]["latent_size"] == 3
    assert last_checkpoint(run_dir)["global_step"] == 8


def test_resume_and_overwrite_together_are_refused(tmp_path: Path) -> None:
    result = run_train(f"hydra.run.dir={tmp_path}", "resume=true", "overwrite=true")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "give resume=true" in result.stderr and "or overwrite=true" in result.stderr
    assert not (tmp_path / ".hydra").exists()


def test_two_runs_started_at_once_into_one_folder(tiny_mnist: Path, tmp_path: Path) -> None:
    """One runs; the other is refused by the folder's lock, in one line, and writes nothing."""
    run_dir = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train.py"), f"data.data_dir={tiny_mnist}", *RUN]
    command.append(f"hydra.run.dir={run_dir}")
    errors = [tmp_path / f"stderr{i}.txt" for i in range(2)]
    runs = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **OFFLINE},
            stdout=subprocess.DEVNULL,
            stderr=path.open("w"),
        )
        for path in errors
    ]
    codes = [run.wait(timeout=300) for run in runs]
    assert sorted(code == 0 for code in codes) == [False, True]
    refused = next(path for path, code in zip(errors, codes, strict=True) if code).read_text()
    assert f"{run_dir} is in use by another run (process " in refused
    assert "Traceback" not in refused
    assert len(list((run_dir / "checkpoints").glob("epoch*.ckpt"))) == 1


def test_a_metrics_csv_cut_short_by_a_kill_keeps_its_whole_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A kill while CSVLogger writes can leave half a row; the resumed run drops it, says so,
    and keeps the whole rows before the checkpoint's step."""
    from lightning.pytorch.loggers import CSVLogger

    from vaelab.loggers import keep_csv_rows

    logger = CSVLogger(tmp_path, name="csv", version="")
    Path(logger.log_dir).mkdir(parents=True)
    (Path(logger.log_dir) / "metrics.csv").write_text(
        "epoch,step,train/loss\n0,7,100.5\n1,15,99.0\n2,23,98.1\n2,3"
    )
    keep_csv_rows([logger], step=16)
    lines = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    assert lines[1:] == ["0,7,100.5", "1,15,99.0"]
    assert "dropped 1 unreadable row(s)" in capsys.readouterr().out
