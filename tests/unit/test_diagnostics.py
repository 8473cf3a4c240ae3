"""vaelab.diagnostics, in-process on a tiny model: ImageLogger, LossProgressBar (ActiveUnits:
tests/unit/test_metrics.py, beside the statistic it logs)."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vaelab.diagnostics import ImageLogger, LossProgressBar
from vaelab.errors import UserError

from ..helpers import TINY, batches, mlp_vae, trainer


def test_image_logger_logs_the_three_pictures_each_validation(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="", version="")
    run = L.Trainer(
        accelerator="cpu",
        logger=logger,
        max_epochs=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[ImageLogger(num_images=4, num_samples=4, nrow=2)],
    )
    run.fit(mlp_vae(**TINY), batches(), batches(8))
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    names = {"val/reconstructions", "val/samples", "val/interpolations"}
    assert names <= set(events.Tags()["images"])
    assert [image.step for image in events.Images("val/samples")] == [5, 10]  # each epoch


def test_image_logger_refuses_zero_images() -> None:
    with pytest.raises(UserError, match="num_images=0"):
        ImageLogger(num_images=0)


def test_loss_progress_bar_shows_the_latest_loss(tmp_path: Path) -> None:
    bar = LossProgressBar(refresh_rate=0)
    run = trainer(tmp_path, [bar], enable_progress_bar=True, max_steps=2)
    run.fit(mlp_vae(**TINY), batches())
    assert bar.loss is not None and torch.isfinite(bar.loss)
