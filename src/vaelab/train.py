"""Fit a VAE from a composed Hydra config; the root `train.py` is the command line for it."""

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from vaelab.config import check_types
from vaelab.data import MNISTDataModule
from vaelab.module import VAEModule


def train(cfg: DictConfig) -> float:
    """Fit, test the best checkpoint, and return its val/loss for sweepers to minimize."""
    check_types(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule: MNISTDataModule = instantiate(cfg.data)
    model: VAEModule = instantiate(cfg.model)
    logger: Logger = instantiate(cfg.logger)
    callbacks: list[L.Callback] = [instantiate(c) for c in cfg.callbacks.values()]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    best_val_loss = trainer.checkpoint_callback.best_model_score.item()
    (test_metrics,) = trainer.test(model, datamodule=datamodule, ckpt_path="best")

    # The HParams tab: hyperparameters next to the final figures of this run.
    final = {"hp/best_val_loss": best_val_loss, "hp/test_loss": test_metrics["test/loss"]}
    logger.log_hyperparams({**model.hparams, **datamodule.hparams}, final, trainer.global_step)
    logger.finalize("success")  # flush: the trainer has closed the logger already
    return best_val_loss
