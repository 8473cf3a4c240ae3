"""Fit a VAE from a composed Hydra config; the root `train.py` is its command line."""

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from vaelab import UserError
from vaelab.checkpoints import check_checkpoint
from vaelab.config import check_types
from vaelab.console import print_config, quiet


def train(cfg: DictConfig) -> float:
    """Fit, test the best checkpoint, and return its val/loss for sweepers to minimize."""
    start = time.perf_counter()
    # Hydra sends log records to the console and to train.log; Lightning's own console
    # handler would print each of its messages a second time.
    logging.getLogger("lightning").handlers.clear()
    quiet()
    if cfg.print_config:
        rank_zero_only(print_config)(cfg)
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
    # One logger, or with logger=many a dict of loggers by name; the trainer takes a list.
    logger = build(cfg.logger, "logger")
    loggers = list(logger.values()) if isinstance(logger, dict) else [logger]
    # callbacks.NAME=null drops one of them.
    callbacks = [build(node, f"callbacks.{name}") for name, node in cfg.callbacks.items() if node]
    trainer: L.Trainer = build(cfg.trainer, "trainer", logger=loggers, callbacks=callbacks)
    if ckpt_path:
        check_checkpoint(ckpt_path, model)

    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    fit_metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if trainer.fast_dev_run:  # Lightning saved no checkpoint: test the weights as they are
        best_val_loss, best_path = fit_metrics["val/loss"], None
    else:
        best = best_checkpoint(trainer)
        best_val_loss, best_path = best.best_model_score.item(), best.best_model_path
    (test_metrics,) = trainer.test(
        model, datamodule=datamodule, ckpt_path=best_path, weights_only=True
    )

    # Each logger gets the hyperparameters next to the final figures of this run; TensorBoard
    # takes both in one call, which fills its HParams tab.
    params = {**model.hparams, **datamodule.hparams}
    final = {"hp/best_val_loss": best_val_loss, "hp/test_loss": test_metrics["test/loss"]}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, final, trainer.global_step)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(final, trainer.global_step)
        logger.finalize("success")  # flush: the trainer has closed the logger already
        if isinstance(logger, WandbLogger):  # its finalize leaves the run open for the next
            logger.experiment.finish()  # WandbLogger in this process, e.g. a sweep's next job
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
    raise UserError("callbacks: no ModelCheckpoint monitors val/loss; keep best_checkpoint")


def write_summary(cfg: DictConfig, status: str, start: float, **fields: Any) -> None:
    """metrics.json in the run folder: what the sweep summary reads."""
    summary = {
        "status": status,
        "overrides": list(HydraConfig.get().overrides.task),
        "wall_seconds": time.perf_counter() - start,
        "torch_threads": torch.get_num_threads(),  # hydra/launcher=cpu_parallel: one per job
        **fields,
    }
    (Path(cfg.output_dir) / "metrics.json").write_text(json.dumps(summary, indent=2))


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
        raise
