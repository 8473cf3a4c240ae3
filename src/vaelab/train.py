"""Fit a VAE from a composed Hydra config; the root `train.py` is its command line, `main`."""

import logging
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from vaelab import records
from vaelab.checkpoints import check_checkpoint
from vaelab.config import check_run, check_types
from vaelab.console import one_line_errors, print_config, quiet
from vaelab.errors import UserError
from vaelab.loggers import continue_logging, keep_csv_rows, log_final
from vaelab.runs import FolderRefused, claim_folder


def main(cfg: DictConfig) -> float:
    """`train`, for the command line: a UserError as one line, a SIGTERM as its usual exit
    status, and any other failure recorded in metrics.json before Hydra reports it."""
    start = time.perf_counter()
    with one_line_errors():
        try:
            return train(cfg)
        except SIGTERMException:  # Lightning stopped after a batch; last.ckpt holds the state
            raise SystemExit(128 + 15) from None  # the usual status of a process ended so
        except FolderRefused:  # the folder, and any metrics.json in it, belong to another run
            raise
        except Exception as err:  # recorded for scripts/summarize.py, then reported by Hydra
            write_summary(cfg, "failed", start, reason=f"{type(err).__name__}: {err}")
            raise


def train(cfg: DictConfig) -> float:
    """Fit, test the best checkpoint, and return its val/loss for sweepers to minimize."""
    start = time.perf_counter()
    # Hydra sends log records to the console and to train.log; Lightning's own console
    # handler would print each of its messages a second time.
    logging.getLogger("lightning").handlers.clear()
    quiet()
    if cfg.print_config:
        rank_zero_only(print_config)(cfg)
    claim_folder(cfg)  # its lock; a folder that holds another run is refused
    check_run(cfg)  # a bad seed, or settings under which no best checkpoint would be kept
    # seed=null: a random seed (Lightning's own choice would be 0), logged with the hparams.
    seed = random.SystemRandom().randrange(2**31) if cfg.seed is None else cfg.seed
    cfg.seed = L.seed_everything(seed, workers=True)
    check_types(cfg)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    ckpt_path = resume_from(cfg)
    datamodule = build(cfg.data, "data")
    # The model is built for the data: its image shape and number of classes.
    data_facts = {"image_shape": datamodule.image_shape, "num_classes": datamodule.num_classes}
    model = build(cfg.model, "model", **data_facts)
    if ckpt_path:  # before any logger touches the record of the run
        check_checkpoint(ckpt_path, model)
    if cfg.resume:  # the loggers go on with the record of the run in this folder
        hparams = {**model.hparams, **datamodule.hparams}
        resumed_step = continue_logging(cfg.logger, ckpt_path, hparams, cfg.output_dir)
    # One logger, or with logger=many a dict of loggers by name; the trainer takes a list.
    logger = build(cfg.logger, "logger")
    loggers = list(logger.values()) if isinstance(logger, dict) else [logger]
    if cfg.resume:
        keep_csv_rows(loggers, resumed_step)
    # callbacks.NAME=null drops one of them.
    callbacks = [build(node, f"callbacks.{name}") for name, node in cfg.callbacks.items() if node]
    trainer: L.Trainer = build(cfg.trainer, "trainer", logger=loggers, callbacks=callbacks)
    best = None if trainer.fast_dev_run else best_checkpoint(trainer)  # refused before the fit

    with memory_named():
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    fit_metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if trainer.fast_dev_run:  # Lightning saved no checkpoint: test the weights as they are
        best_val_loss, best_path = fit_metrics["val/loss"], None
    elif best.best_model_score is None:  # e.g. max_steps ended training before a validation
        raise UserError(
            f"no validation ran in {trainer.global_step} training steps, so no best checkpoint "
            "was kept; let training reach one, e.g. with more trainer.max_steps or a smaller "
            "trainer.val_check_interval"
        )
    else:
        best_val_loss, best_path = best.best_model_score.item(), best.best_model_path
    with memory_named():
        (test_metrics,) = trainer.test(
            model, datamodule=datamodule, ckpt_path=best_path, weights_only=True
        )

    params = {**model.hparams, **datamodule.hparams}
    final = {"hp/best_val_loss": best_val_loss, "hp/test_loss": test_metrics["test/loss"]}
    log_final(trainer, params, final)
    if trainer.is_global_zero:
        metrics = {**fit_metrics, **test_metrics}
        epochs = trainer.current_epoch
        write_summary(
            cfg, "completed", start, epochs=epochs, best_val_loss=best_val_loss, metrics=metrics
        )
    return best_val_loss


def best_checkpoint(trainer: L.Trainer) -> ModelCheckpoint:
    """The ModelCheckpoint that keeps the best checkpoint by val/loss."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor == "val/loss":
            return callback
    raise UserError(
        "callbacks: no ModelCheckpoint monitors val/loss, so no best checkpoint would be kept "
        "for the test; keep callbacks.best_checkpoint, with its monitor: val/loss"
    )


def write_summary(cfg: DictConfig, status: str, start: float, **fields: Any) -> None:
    """The run's metrics.json, what scripts/summarize.py reads: status, overrides, figures."""
    record = {
        "status": status,
        "overrides": list(HydraConfig.get().overrides.task),
        "wall_seconds": time.perf_counter() - start,
        "torch_threads": torch.get_num_threads(),  # hydra/launcher=cpu_parallel: one per job
        **fields,
    }
    records.write_summary(cfg.output_dir, record)


def resume_from(cfg: DictConfig) -> str | None:
    """The checkpoint to continue from: `ckpt_path`, or with `resume=true` the run's last."""
    if not cfg.resume:
        return cfg.ckpt_path
    if cfg.ckpt_path:
        raise UserError("give either ckpt_path=... or resume=true, not both")
    last = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    if not last.is_file():  # so that one command both starts a job and resumes it
        print(f"resume=true: {last} does not exist yet, so training starts from scratch.")
        return None
    return str(last)


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """Instantiate a config node; a rejected value is reported with its key, no traceback."""
    try:
        return instantiate(node, _convert_="all", **kwargs)  # plain lists and dicts
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise UserError(f"{key}.{cause}") from None
        if isinstance(cause, MisconfigurationException | ValueError):
            raise UserError(f"{key}: {cause}") from None
        if isinstance(cause, RuntimeError) and (error := out_of_memory(cause)):
            raise UserError(f"{key}: {error}") from None
        raise


# What sets the memory a run needs: the network's sizes, the prior's, and the batch's.
MEMORY_SIZES = (
    "model.latent_size, the hidden_sizes (or channels) of model.encoder and model.decoder, "
    "model.prior.num_components, model.iw_samples, or data.batch_size (data.eval_batch_size "
    "in validation and test)"
)


def out_of_memory(err: RuntimeError) -> UserError | None:
    """A one-line UserError for torch's running out of memory (on a GPU an OutOfMemoryError,
    on a CPU a RuntimeError "can't allocate memory"), naming the sizes to reduce; None for
    another error."""
    message = str(err)
    if not isinstance(err, torch.OutOfMemoryError) and not re.search(
        r"can't allocate memory|out of memory", message, re.IGNORECASE
    ):
        return None
    amount = ""
    if tried := re.search(r"tried to allocate ([\d.]+) ?(\w+)", message, re.IGNORECASE):
        number, unit = float(tried[1]), tried[2]
        if unit == "bytes":  # the CPU allocator's count
            number, unit = number / 2**30, "GiB"
        amount = f" (tried to allocate {number:.1f} {unit})"
    return UserError(f"out of memory{amount}: reduce {MEMORY_SIZES}")


@contextmanager
def memory_named() -> Iterator[None]:
    """Report running out of memory inside the block as a UserError naming the sizes to reduce."""
    try:
        yield
    except RuntimeError as err:
        if error := out_of_memory(err):
            raise error from None
        raise
