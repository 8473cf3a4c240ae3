"""vaelab.diagnostics, in-process on a tiny model: ImageLogger, LossProgressBar, GradNorm
(ActiveUnits: tests/unit/test_metrics.py, beside the statistic it logs)."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vaelab.diagnostics import GradNorm, ImageLogger, LossProgressBar
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


class TotalNorms(L.Callback):
    """The total gradient norm of each optimizer step, by torch, per epoch; a checkpoint saved
    after step `save_at`."""

    def __init__(self, save_at: int = 0, path: Path | None = None) -> None:
        self.epochs: list[list[float]] = []
        self.save_at, self.path = save_at, path

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append([])

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *_: object
    ) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not self.epochs:  # resumed inside an epoch, whose start it did not see
            self.epochs.append([])
        self.epochs[-1].append(torch.nn.utils.get_total_norm(grads).item())

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.path and trainer.global_step == self.save_at:
            trainer.save_checkpoint(self.path)


def test_grad_norm_logs_the_epochs_mean_and_largest_norm_before_clipping(tmp_path: Path) -> None:
    """Two epochs of 5 steps, gradients clipped to a norm of 0.01: the second epoch's mean and
    largest of torch's total norms, which exceed the clipping's."""
    norms = TotalNorms()
    run = trainer(tmp_path, [GradNorm(), norms], max_epochs=2, gradient_clip_val=0.01)
    run.fit(mlp_vae(**TINY), batches())
    last = torch.tensor(norms.epochs[-1])
    assert len(last) == 5 and last.min() > 0.01  # before clipping
    logged = run.callback_metrics
    assert logged["train/grad_norm"].item() == pytest.approx(last.mean().item(), rel=1e-5)
    assert logged["train/grad_norm_max"].item() == pytest.approx(last.max().item(), rel=1e-5)


def test_grad_norm_of_an_epoch_resumed_inside_counts_the_steps_before_the_save(
    tmp_path: Path,
) -> None:
    """Saved after step 3 of 5 and resumed: the epoch's mean and largest are those of the 3
    norms before the save and the 2 after, as the checkpoint keeps the unfinished sums."""
    path = tmp_path / "step3.ckpt"
    before, after = TotalNorms(3, path), TotalNorms()
    trainer(tmp_path, [GradNorm(), before]).fit(mlp_vae(**TINY), batches())
    resumed = trainer(tmp_path, [GradNorm(), after])
    resumed.fit(mlp_vae(**TINY), batches(), ckpt_path=path)
    norms = torch.tensor(before.epochs[0][:3] + after.epochs[0])
    assert len(norms) == 5
    logged = resumed.callback_metrics
    assert logged["train/grad_norm"].item() == pytest.approx(norms.mean().item(), rel=1e-5)
    assert logged["train/grad_norm_max"].item() == pytest.approx(norms.max().item(), rel=1e-5)
