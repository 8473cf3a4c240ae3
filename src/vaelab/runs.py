"""The run folder: one run at a time in it, no run replaced unasked, and a resumed run's
loggers going on with the record that its earlier part left there."""

import csv
import fcntl
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, TextIO

from hydra.experimental.callback import Callback
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, open_dict

from vaelab.checkpoints import read_checkpoint
from vaelab.errors import UserError

# What a training run writes into its folder, besides Hydra's .hydra/ and train.log.
RUN_OUTPUTS = (
    "checkpoints",
    "metrics.json",
    "hparams.yaml",
    "csv",
    "mlflow.db",
    "mlartifacts",
    "wandb",
    "figures",
    "fit-profile.txt",
    "test-profile.txt",
)
TENSORBOARD_EVENTS = "events.out.tfevents.*"
LOCK_FILE = ".lock"  # holds the process id of the run that has the folder


def run_outputs(folder: Path) -> list[Path]:
    """The files and folders in `folder` that a training run wrote."""
    named = [folder / name for name in RUN_OUTPUTS if (folder / name).exists()]
    return named + sorted(folder.glob(TENSORBOARD_EVENTS))


class FolderRefused(UserError):
    """This run may not run in its folder: another run's metrics.json there is not its to write."""


HELD: dict[Path, TextIO] = {}  # the run folders this process holds the lock of, till it ends


def claim_folder(cfg: DictConfig) -> None:
    """Take the lock of the run folder, for as long as this process lives, and refuse a folder
    that holds a run unless `resume=true` continues it or `overwrite=true` removes it (which
    this does). Processes of rank > 0 (DDP) share rank 0's folder and claim nothing."""
    if rank_zero_only.rank != 0:
        return
    if cfg.resume and cfg.overwrite:
        raise FolderRefused(
            "give resume=true (continue the run in the folder) or overwrite=true (replace it), "
            "not both"
        )
    folder = Path(cfg.output_dir).absolute()
    if folder not in HELD:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 (held open while the run lasts)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise FolderRefused(
                f"{folder} is in use by another run (process {holder}): let it finish, or give "
                "this run another folder with hydra.run.dir=..."
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        HELD[folder] = lock
    held = run_outputs(folder)
    if not held or cfg.resume:
        return
    names = ", ".join(path.name + "/" * path.is_dir() for path in held[:3])
    names += ", ..." if len(held) > 3 else ""
    if not cfg.overwrite:
        raise FolderRefused(
            f"{folder} holds a run ({names}): continue it with resume=true, give this run "
            "another folder (hydra.run.dir=...), or replace it with overwrite=true"
        )
    if cfg.ckpt_path and Path(cfg.ckpt_path).absolute().is_relative_to(folder):
        raise FolderRefused(
            f"overwrite=true would delete ckpt_path={cfg.ckpt_path}: copy it out of {folder} first"
        )
    for path in held:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    print(f"overwrite=true: removed the earlier run's {names} from {folder}")


class RunFolder(Callback):
    """`claim_folder` for a single run, before Hydra writes its .hydra/ into the folder (which
    would replace the config of the run there). A sweep's jobs have folders of their own; the
    job's `train` claims it. Hydra turns an exception in a callback into a warning, so a
    refusal ends the process itself, with the one line."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        cfg = config.copy()
        with open_dict(cfg):
            cfg.output_dir = config.hydra.run.dir  # not resolvable before the job starts
        try:
            claim_folder(cfg)
        except UserError as err:
            raise SystemExit(str(err)) from None  # printed to stderr; exit status 1


def logger_configs(node: DictConfig | None) -> list[DictConfig]:
    """The logger configs in `cfg.logger`: itself, or with logger=many each of its values."""
    if node is None:
        return []
    if node._target_ == "builtins.dict":  # logger=many
        return [value for key, value in node.items() if key != "_target_" and value]
    return [node]


def continue_logging(
    node: DictConfig, ckpt_path: str | None, hparams: dict[str, Any], output_dir: str
) -> int:
    """Point the loggers of `cfg.logger` at the record of the run that `resume=true` continues,
    and return the step it continues from: the checkpoint's (0 without one).

    What was logged at earlier steps stays. TensorBoard drops the events from that step on
    (`purge_step`), which an interrupted run logged after its checkpoint and the resumed run
    logs again (`keep_csv_rows` does so for CSV); so too the final test/ and hp/ figures of a
    finished run that is extended, which the resumed run logs at its own end, and the images
    of the validation just before the checkpoint (`ImageLogger` logs them at its step).
    MLflow goes on with the folder's run (found by its tag `run_dir`); as MLflow cannot change
    a run's parameters, a resume that changes hyperparameters gets a new MLflow run, nested
    under that one. W&B goes on with the id of the folder's latest run (wandb/latest-run).
    MLflow and W&B keep all they were sent: a step logged before a crash and again after the
    resume appears twice there.
    """
    checkpoint = read_checkpoint(ckpt_path) if ckpt_path else {}
    step = checkpoint.get("global_step", 0)
    saved = {
        **checkpoint.get("hyper_parameters", {}),
        **checkpoint.get("datamodule_hyper_parameters", {}),
    }
    for config in logger_configs(node):
        target = config._target_.rpartition(".")[2]
        with open_dict(config):
            if target == "TensorBoardLogger":
                config.purge_step = step
            elif target == "MLFlowLogger":
                run_id = mlflow_run(config, output_dir)
                if run_id and saved == hparams:
                    config.run_id = run_id
                elif run_id:
                    config.tags["mlflow.parentRunId"] = run_id
                    print(
                        f"resume: the hyperparameters differ from the checkpoint's, and MLflow "
                        f"keeps a run's parameters, so this part is a new MLflow run under "
                        f"{run_id}"
                    )
            elif target == "WandbLogger":
                latest = Path(config.save_dir) / "wandb" / "latest-run"
                if latest.exists():  # offline-run-DATE_TIME-ID or run-DATE_TIME-ID
                    config.id = latest.resolve().name.rpartition("-")[2]
    return step


def mlflow_run(config: DictConfig, output_dir: str) -> str | None:
    """The id of the latest MLflow run tagged with this run folder, or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.experiment_name)
    if experiment is None:
        return None
    quote = '"' if "'" in output_dir else "'"
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.run_dir = {quote}{output_dir}{quote}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def keep_csv_rows(loggers: list[Logger], step: int) -> None:
    """Let each CSVLogger append to its metrics.csv (it would delete the file), keeping the
    rows before `step`, where the resumed run goes on (see `continue_logging`)."""
    if rank_zero_only.rank != 0:
        return
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        rows = []
        if path.is_file():
            with open(path, newline="") as file:
                rows = list(csv.DictReader(file))
        # A row is whole when it has every column (DictReader fills those missing with None,
        # and files extra ones under None) and an integer step.
        whole = [None not in row and None not in row.values() for row in rows]
        steps = [
            int(row["step"]) if ok and row["step"].isdigit() else None
            for row, ok in zip(rows, whole, strict=True)
        ]
        if damaged := steps.count(None):  # e.g. a last line cut short by a kill mid-write
            print(f"resume: dropped {damaged} unreadable row(s) of {path}, cut short by the crash")
        rows = [row for row, at in zip(rows, steps, strict=True) if at is not None and at < step]
        with warnings.catch_warnings():  # "Previous log files ... will be deleted"
            warnings.filterwarnings("ignore", "Experiment logs directory .* exists")
            writer = logger.experiment  # which deletes metrics.csv
        writer.metrics = rows
        writer.save()
