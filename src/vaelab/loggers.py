"""What train.py does with its loggers beyond Lightning's: a resumed run's loggers go on with
the record its earlier part left, and each logger gets the run's final figures."""

import csv
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, open_dict

from vaelab.checkpoints import read_checkpoint


def log_final(trainer: L.Trainer, params: dict[str, Any], final: dict[str, float]) -> None:
    """Give each logger the hyperparameters next to the final figures of the run, and close it.
    TensorBoard takes both in one call, which fills its HParams tab."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, final, trainer.global_step)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(final, trainer.global_step)
        logger.finalize("success")  # flush: the trainer has closed the logger already
        if isinstance(logger, WandbLogger):  # its finalize leaves the run open for the next
            logger.experiment.finish()  # WandbLogger in this process, e.g. a sweep's next job


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
