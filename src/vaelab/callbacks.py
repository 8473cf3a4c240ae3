"""Lightning callbacks: pictures of what the VAE learns, a lean progress bar, safe stops."""

import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from torchvision.utils import make_grid

from vaelab import UserError
from vaelab.module import VAEModule
from vaelab.pictures import interpolation_latents, pairs_grid, same_class_pairs


class ImageLogger(L.Callback):
    """Each validation epoch, log validation digits above their reconstructions, samples,
    and interpolations between validation digits.

    The digits are the first of the validation set and the samples decode fixed draws from
    the prior, so the images of successive epochs show the same things. A conditional model's
    samples have one row per class, each row decoding the same nrow draws, and each row of
    its interpolations joins two digits of one class, decoded with their label.
    """

    def __init__(self, num_images: int = 32, num_samples: int = 64, nrow: int = 8) -> None:
        if num_images % nrow:
            raise UserError(f"num_images={num_images} must be a multiple of nrow={nrow}")
        self.num_images = num_images
        self.num_samples = num_samples
        self.nrow = nrow
        self.images: Tensor | None = None
        self.labels: Tensor | None = None
        self.walk_ends: tuple[Tensor, Tensor, Tensor | None] | None = None  # starts, ends, labels
        self.z: Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: VAEModule, stage: str) -> None:
        noise = torch.Generator().manual_seed(0)
        self.z = torch.randn(self.num_samples, pl_module.hparams.latent_size, generator=noise)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: VAEModule,
        outputs: Any,
        batch: Tensor | tuple[Tensor, Tensor],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0:
            return
        images, labels = pl_module.split_batch(batch)
        self.images = images[: self.num_images]
        self.labels = None if labels is None else labels[: self.num_images]
        if labels is None:  # row i walks from digit i to digit rows + i
            rows = min(self.nrow, len(images) // 2)
            starts, ends = torch.arange(rows), torch.arange(rows, 2 * rows)
        else:  # one label must serve the whole way
            starts, ends = same_class_pairs(labels)
        starts, ends = starts.to(images.device), ends.to(images.device)
        self.walk_ends = (images[starts], images[ends], None if labels is None else labels[starts])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: VAEModule) -> None:
        if trainer.sanity_checking or not isinstance(trainer.logger, TensorBoardLogger):
            return
        writer, step = trainer.logger.experiment, trainer.global_step
        x, z = self.images, self.z.to(pl_module.device)  # (N, 1, 28, 28), (num_samples, latent)
        reconstructions = pairs_grid(x, pl_module.reconstruct(x, self.labels), self.nrow)
        writer.add_image("val/reconstructions", reconstructions, step)
        if pl_module.needs_labels:
            classes = torch.arange(pl_module.hparams.num_classes, device=pl_module.device)
            z = z[: self.nrow].repeat(len(classes), 1)  # (classes * nrow, latent)
            samples = pl_module.decode(z, classes.repeat_interleave(self.nrow))
        else:
            samples = pl_module.decode(z)
        writer.add_image("val/samples", make_grid(samples, self.nrow), step)
        starts, ends, labels = self.walk_ends  # (P, 1, 28, 28) twice, (P,) or None
        if rows := len(starts):
            both = None if labels is None else labels.repeat(2)
            mean = pl_module.encode(torch.cat([starts, ends]), both)[0]  # (2P, latent)
            z = interpolation_latents(mean[:rows], mean[rows:], self.nrow)  # (P * nrow, latent)
            walk_labels = None if labels is None else labels.repeat_interleave(self.nrow)
            walks = pl_module.decode(z, walk_labels)
            writer.add_image("val/interpolations", make_grid(walks, self.nrow), step)


class LossProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing the training loss of the latest batch.

    The loss is read only when the bar redraws; logging it with `self.log(prog_bar=True)`
    would read it at every step, which on a GPU waits for the step to finish.
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate)
        self.loss: Tensor | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        self.loss = outputs["loss"]
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        if self.loss is not None and trainer.training:
            metrics["loss"] = f"{self.loss.item():.1f}"
        return metrics


class InterruptCheckpoint(L.Callback):
    """On Ctrl-C or SIGTERM, save the training state as `last.ckpt`, for `resume=true`.

    Not Lightning's OnExceptionCheckpoint: with one among the callbacks, `fit(ckpt_path=None)`
    silently resumes from the newest last.ckpt in the run folder, so a fresh run into an old
    folder would continue it. And it saves on any exception, a diverged state included.
    """

    def __init__(self, dirpath: str, filename: str = "last") -> None:
        self.ckpt_path = os.path.join(dirpath, f"{filename}.ckpt")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt | SIGTERMException):
            trainer.save_checkpoint(self.ckpt_path)
            rank_zero_info(f"Interrupted: saved {self.ckpt_path}; resume=true continues from it.")
