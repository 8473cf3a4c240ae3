"""Each option of conf/logger writes what its user opens: metrics, hyperparameters, the final
figures and the pictures, read back with the logger's own tools."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from vaelab.train import train

from ..conftest import ROOT, TINY_RUN, compose_train, read_events

GRIDS = ["val/reconstructions", "val/samples", "val/interpolations"]


def run(logger: str, data: Path, out: Path) -> float:
    """Train for TINY_RUN's epoch in this process with `logger=LOGGER`; the best val/loss."""
    return train(compose_train([f"data.data_dir={data}", *TINY_RUN, f"logger={logger}"], out))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_csv_writes_the_metrics_and_hyperparameters(tiny_mnist: Path, tmp_path: Path) -> None:
    best = run("csv", tiny_mnist, tmp_path)
    rows = read_csv(tmp_path / "csv" / "metrics.csv")
    assert {"train/loss", "val/loss", "test/loss", "hp/best_val_loss", "hp/test_loss"} <= set(
        rows[0]
    )
    assert [float(row["hp/best_val_loss"]) for row in rows if row["hp/best_val_loss"]] == [
        pytest.approx(best)
    ]
    assert yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())["latent_size"] == 4
    assert not list(tmp_path.glob("events.out.tfevents.*"))  # CSV alone: no TensorBoard


def test_mlflow_store_in_the_run_folder(tiny_mnist: Path, tmp_path: Path) -> None:
    MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient  # the loggers extra
    best = run("mlflow", tiny_mnist, tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("vaelab")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED"
    metrics, params = found.data.metrics, found.data.params
    assert {"train/loss", "val/loss", "test/loss", "hp/test_loss"} <= set(metrics)
    assert metrics["hp/best_val_loss"] == pytest.approx(best)
    assert params["latent_size"] == "4"
    # The pictures of each validation epoch, as image artifacts kept in the run folder.
    assert Path(found.info.artifact_uri).is_relative_to(tmp_path)
    images = [a.path for a in client.list_artifacts(found.info.run_id, "images")]
    for grid in GRIDS:
        name = f"images/{grid.replace('/', '~')}+step+"
        assert any(path.startswith(name) and path.endswith(".png") for path in images), grid


# `python -c` this with a log file and train.py's arguments: train.py, with each try to reach
# the network (a name lookup, or a socket other than a Unix one) written to the log, up to the
# process's exit, where wandb's own telemetry would be sent.
RECORD_THE_NETWORK = f"""
import runpy, socket, sys
log, sys.argv = sys.argv[1], [{str(ROOT / "train.py")!r}, *sys.argv[2:]]
def record(event, args):
    if event == "socket.getaddrinfo" or (
        event == "socket.connect" and args[0].family != socket.AF_UNIX
    ):
        with open(log, "a") as file:
            file.write(f"{{event}} {{args}}\\n")
sys.addaudithook(record)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_wandb_writes_an_offline_run_without_the_network(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No login and no WANDB_MODE: the run is written offline, and nothing leaves the machine."""
    pytest.importorskip("wandb")  # the loggers extra
    for name in ["WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"]:
        monkeypatch.delenv(name, raising=False)
    for name in ["WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"]:  # not the home's
        monkeypatch.setenv(name, str(tmp_path / "home" / name))
    log, out = tmp_path / "network.log", tmp_path / "run"
    args = [f"data.data_dir={tiny_mnist}", *TINY_RUN, "logger=wandb", f"hydra.run.dir={out}"]
    command = [sys.executable, "-c", RECORD_THE_NETWORK, str(log), *args]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert not log.exists(), log.read_text()
    (offline_run,) = (out / "wandb").glob("offline-run-*")
    records = next(offline_run.glob("run-*.wandb")).read_bytes()  # protobuf: keys in plain text
    for key in [b"val/loss", b"test/loss", b"hp/test_loss", b"latent_size"]:
        assert key in records, key
    for grid in GRIDS:
        assert list((offline_run / "files" / "media" / "images").glob(f"{grid}_*.png")), grid
    assert "Tracking run with wandb version" not in result.stderr  # settings.quiet
    assert str(offline_run) in result.stderr  # where the run went, for `wandb sync`


def test_many_writes_tensorboard_and_csv(tiny_mnist: Path, tmp_path: Path) -> None:
    best = run("many", tiny_mnist, tmp_path)
    events = read_events(tmp_path)
    assert {"val/loss", "test/loss", "hp/best_val_loss"} <= set(events.Tags()["scalars"])
    assert events.Scalars("hp/best_val_loss")[-1].value == pytest.approx(best)
    assert set(GRIDS) <= set(events.Tags()["images"])
    rows = read_csv(tmp_path / "csv" / "metrics.csv")
    assert {"train/loss", "val/loss", "test/loss", "hp/test_loss"} <= set(rows[0])


def test_more_loggers_join_many_by_name(tmp_path: Path) -> None:
    pytest.importorskip("wandb")  # the loggers extra
    cfg = compose_train(["logger=many", "+logger@logger.wandb=wandb"], tmp_path)
    built = instantiate(cfg.logger, _convert_="all")
    assert {name: type(logger) for name, logger in built.items()} == {
        "tensorboard": TensorBoardLogger,
        "csv": CSVLogger,
        "wandb": WandbLogger,
    }
