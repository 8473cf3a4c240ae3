"""Callbacks that show how training goes: active units, pictures in the loggers, and a
progress bar that reads the loss only when it redraws."""

from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from torch import Tensor
from torchvision.transforms.functional import to_pil_image

from vaelab.errors import require
from vaelab.metrics import active_units
from vaelab.pictures import interpolations_grid, pairs_grid, samples_grid

if TYPE_CHECKING:
    from vaelab.module import VAEModule

Batch = tuple[Tensor, Tensor]  # images, labels


class ActiveUnits(L.Callback):
    """Log val/active_units after each validation: the latent dimensions whose mean of
    q(z|x) varies over the validation images by more than `threshold` (Burda et al. 2015,
    Sec. 5.2), from one pass of the encoder over the validation batches as they are seen
    (under DDP, each process's shard, gathered)."""

    def __init__(self, threshold: float = 0.01) -> None:
        self.threshold = threshold
        self.means: list[Tensor] = []  # per validation batch, (B, latent)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: "VAEModule") -> None:
        self.means = []

    @torch.no_grad()
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: "VAEModule",
        outputs: Any,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking:
            return
        images, labels = batch
        given = labels if pl_module.hparams.conditional else None
        self.means.append(pl_module.encode(images, given)[0])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: "VAEModule") -> None:
        if trainer.sanity_checking or not self.means:
            return
        means = pl_module.all_gather(torch.cat(self.means))  # (world_size, N, latent) under DDP
        count = active_units(means.flatten(0, -2), self.threshold)  # -> (world_size * N, latent)
        pl_module.log("val/active_units", float(count), on_epoch=True)
        self.means = []


class ImageLogger(L.Callback):
    """Each validation epoch, log validation images above their reconstructions, samples from
    the prior, and interpolations between validation images, to each logger that takes images:
    TensorBoard, W&B and MLflow (as image artifacts, by step); CSV takes none.

    The images are the first of the validation set, and the samples are drawn with the same
    seed each epoch, so the pictures of successive epochs show the same things. A conditional
    model's samples have one row per class, each decoding the same draws, and each row of its
    interpolations joins two images of one class, decoded with their label.
    """

    TAKE_IMAGES = (TensorBoardLogger, WandbLogger, MLFlowLogger)

    def __init__(self, num_images: int = 32, num_samples: int = 64, nrow: int = 8) -> None:
        """Args:
        num_images: at most this many validation images, as many as the first batch holds.
        """
        counts = {"num_images": num_images, "num_samples": num_samples, "nrow": nrow}
        for name, value in counts.items():
            require(value >= 1, name, value, "use 1 or more")
        self.num_images = num_images
        self.num_samples = num_samples
        self.nrow = nrow
        self.batch: Batch | None = None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0:
            self.batch = batch

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: "VAEModule") -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, self.TAKE_IMAGES)]
        if trainer.sanity_checking or not loggers:
            return
        images, labels = self.batch
        x, y = images[: self.num_images], labels[: self.num_images]
        given = y if pl_module.hparams.conditional else None
        noise = torch.Generator().manual_seed(0)  # the same draws each epoch
        grids = {
            "val/reconstructions": pairs_grid(x, pl_module.reconstruct(x, given), self.nrow),
            "val/samples": samples_grid(pl_module, self.num_samples, self.nrow, noise),
            "val/interpolations": interpolations_grid(
                pl_module, images, labels, self.nrow, self.nrow
            ),
        }
        for name, grid in grids.items():
            if grid is not None:  # None: no two images to join
                for logger in loggers:
                    self.log_image(logger, name, grid, trainer.global_step)

    @staticmethod
    def log_image(logger: Logger, name: str, grid: Tensor, step: int) -> None:
        """Log a (C, H, W) grid of values in [0, 1] to a logger of `TAKE_IMAGES`."""
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(name, grid, step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(name, [to_pil_image(grid)], step)
        else:  # MLflow: under the run's artifacts, images/; its UI shows them by step
            logger.experiment.log_image(logger.run_id, to_pil_image(grid), key=name, step=step)


class LossProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing the training loss of the latest batch.

    The loss is read only when the bar redraws; logging it with `self.log(prog_bar=True)`
    would read it at every step, which on a GPU waits for the step to finish.
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate)
        self.loss: Tensor | None = None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.loss = outputs["loss"]
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The model logs the last epoch's train/ metrics after the bar's on_train_epoch_end.
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
        super().on_train_end(trainer, pl_module)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        if self.loss is not None and trainer.training:
            metrics["loss"] = f"{self.loss.item():.1f}"
        return metrics


class GradNorm(L.Callback):
    """Log train/grad_norm, the epoch's mean over optimizer steps of the total gradient norm
    (the 2-norm of all gradients together, before any clipping), and train/grad_norm_max.

    Each step's norm is added up on the device, and read once per epoch: no step waits for
    the device. A checkpoint keeps the unfinished epoch's sums, so a resumed run logs what an
    uninterrupted one would.
    """

    def __init__(self) -> None:
        self.total: Tensor | None = None  # the epoch's sum of norms so far, and their largest
        self.largest: Tensor | None = None
        self.steps = 0

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads).detach()  # () on the device, not read
        if self.total is None or self.largest is None:
            self.total, self.largest = norm, norm
        else:  # .to: a resumed run's sums come from the checkpoint on the CPU
            self.total = self.total.to(norm.device) + norm
            self.largest = torch.maximum(self.largest.to(norm.device), norm)
        self.steps += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.total is None or self.largest is None:
            return
        # DDP's gradients are the same in every process; sync_dist keeps Lightning quiet.
        pl_module.log("train/grad_norm", self.total / self.steps, sync_dist=True)
        pl_module.log("train/grad_norm_max", self.largest, sync_dist=True, reduce_fx="max")
        self.total, self.largest, self.steps = None, None, 0

    def state_dict(self) -> dict[str, Any]:
        if self.total is None or self.largest is None:
            return {"steps": 0}
        return {"total": self.total.cpu(), "largest": self.largest.cpu(), "steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = state_dict["steps"]
        self.total, self.largest = state_dict.get("total"), state_dict.get("largest")
