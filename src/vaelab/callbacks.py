"""Lightning callbacks: active units, pictures, a lean progress bar, and what makes runs
resumable and safe (last.ckpt, the random state, a stop on divergence)."""

import os
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from torchvision.transforms.functional import to_pil_image

from vaelab.errors import UserError, require
from vaelab.metrics import active_units
from vaelab.pictures import interpolations_grid, pairs_grid, samples_grid

if TYPE_CHECKING:
    from vaelab.module import VAEModule

Batch = tuple[Tensor, Tensor]  # images, labels


class ActiveUnits(L.Callback):
    """Log val/active_units after each validation: the latent dimensions whose mean of
    q(z|x) varies over the validation images by more than `threshold` (Burda et al. 2015,
    Sec. 5.2). One pass of the encoder over them: for the default network about 1% of an
    epoch on a CPU."""

    def __init__(self, threshold: float = 0.01) -> None:
        self.threshold = threshold

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: "VAEModule") -> None:
        if trainer.sanity_checking:
            return
        data, conditional = trainer.datamodule, pl_module.hparams.conditional
        chunks = zip(data.val_images.split(1000), data.val_labels.split(1000), strict=True)
        means = [pl_module.encode(x, y if conditional else None)[0] for x, y in chunks]
        count = active_units(torch.cat(means), self.threshold)
        pl_module.log("val/active_units", float(count), on_epoch=True)


class DivergenceError(UserError):
    """Training produced a non-finite loss; reported like a user error, without a traceback."""


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


class LastCheckpoint(Checkpoint):
    """`last.ckpt`, the state that `resume=true` continues from: written at the end of each
    training epoch, every N optimizer steps, where training stops inside an epoch (at
    `trainer.max_time` or `max_steps`), and on Ctrl-C or SIGTERM during a training batch
    (not during validation or the test, where the file is left as training saved it).

    One callback for the one file. Lightning's ModelCheckpoint saves either every N steps or
    each epoch, not both; and with its OnExceptionCheckpoint among the callbacks,
    `fit(ckpt_path=None)` silently resumes from the newest last.ckpt in the folder (a fresh run
    into an old folder would continue it), and it saves on any exception, a diverged state too.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 500) -> None:
        if every_n_train_steps < 0:
            raise UserError(
                f"every_n_train_steps={every_n_train_steps} is invalid: use 0 (never) or more"
            )
        self.path = os.path.join(dirpath, "last.ckpt")
        self.every_n_train_steps = every_n_train_steps
        self.step = 0  # the optimizer steps taken by the previous batch's end
        self.stopped: dict[str, Any] | None = None  # what was saved where training stopped
        self.saving_stop = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.step = trainer.global_step

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # With trainer.accumulate_grad_batches > 1 only some batches end with an optimizer
        # step; the others share its global_step, and a state saved there would lack their
        # accumulated gradients.
        stepped, self.step = trainer.global_step != self.step, trainer.global_step
        every = self.every_n_train_steps
        # Not at an epoch's last batch: the save at the epoch's end follows its validation,
        # and a state saved before that validation resumes past the rest of the run.
        last_batch = batch_idx + 1 == trainer.num_training_batches
        periodic = stepped and every and trainer.global_step % every == 0 and not last_batch
        # Training stops before the epoch's last batch: trainer.max_time's Timer (which runs
        # before the Checkpoint callbacks) has set should_stop, or max_steps is reached.
        # Lightning then ends the epoch as if it were complete, and a checkpoint saved at its
        # end would resume into the next epoch; this one resumes into the rest of this one.
        stops = trainer.fit_loop.epoch_loop.done and batch_idx + 1 < trainer.num_training_batches
        if (periodic or stops) and not trainer.fast_dev_run:
            self.saving_stop = stops
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.saving_stop:
            self.stopped, self.saving_stop = checkpoint, False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the epoch's validation, as ModelCheckpoint saves by default: a checkpoint
        # written at validation's end would resume into an empty rest of the epoch.
        if trainer.fast_dev_run:
            return
        if self.stopped is None:
            trainer.save_checkpoint(self.path, weights_only=False)
            return
        # Stopped inside the epoch: Lightning has validated and ModelCheckpoint may have kept
        # a new best and deleted the one before, so the state saved at the stop (its tensors,
        # the model's and optimizer's own, unchanged since) is saved again with the files that
        # the other Checkpoint callbacks keep now.
        for callback in trainer.checkpoint_callbacks:
            if callback is not self and (state := callback.state_dict()):
                self.stopped["callbacks"][callback.state_key] = state
        trainer.strategy.save_checkpoint(self.stopped, self.path)
        self.stopped = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Only inside a training batch's loop: a state saved in fit's validation fails to
        # resume, and in the test (after the fit) it holds the tested best weights, no
        # optimizer state and a wrong epoch. last.ckpt keeps what training saved before.
        training = trainer.state.fn == TrainerFn.FITTING and trainer.training
        if isinstance(exception, KeyboardInterrupt | SIGTERMException) and training:
            trainer.save_checkpoint(self.path, weights_only=False)
            rank_zero_info(f"Interrupted: saved {self.path}; resume=true continues from it.")


class RandomState(L.Callback):
    """Save torch's random state in checkpoints and restore it when training resumes, so that
    the reparameterization noise goes on as if the run had not stopped."""

    def __init__(self) -> None:
        self.resumed: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {"rng": torch.get_rng_state(), "cuda_rng": cuda}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resumed = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, after the sanity check's validation steps have drawn their noise.
        if self.resumed is not None:
            torch.set_rng_state(self.resumed["rng"])
            if self.resumed["cuda_rng"]:
                torch.cuda.set_rng_state_all(self.resumed["cuda_rng"])
        self.resumed = None


class DivergenceStop(L.Callback):
    """Stop with a DivergenceError once a training loss has not been finite, naming the step
    and the last good checkpoint; a diverged state is never saved.

    Each step's finiteness is tracked on the device, with no host sync per step, and read
    every `log_every_n_steps` optimizer steps and before every checkpoint is written.
    """

    def __init__(self) -> None:
        self.bad_step = torch.tensor(-1)  # the first step with a non-finite loss, or -1
        self.step = 0  # the optimizer steps taken by the previous batch's end

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.bad_step = torch.tensor(-1, device=pl_module.device)
        self.step = trainer.global_step

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # With trainer.accumulate_grad_batches > 1 a batch without an optimizer step adds its
        # gradients to the step still to come; the others end the step just taken.
        stepped, self.step = trainer.global_step != self.step, trainer.global_step
        finite = torch.isfinite(outputs["loss"]) | (self.bad_step >= 0)
        self.bad_step = torch.where(finite, self.bad_step, trainer.global_step - stepped)
        if stepped and trainer.global_step % trainer.log_every_n_steps == 0:
            self.check(trainer)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        if (step := int(self.bad_step)) < 0:
            return
        saved = [cb.path for cb in trainer.callbacks if isinstance(cb, LastCheckpoint)]
        best = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        saved += [cb.best_model_path for cb in best]
        last_good = next(
            (path for path in saved if path and os.path.exists(path)), "none was saved"
        )
        if step == 0:  # before any update: the settings or the data, not the learning rate
            hint = "Check the data and the model's settings, e.g. model.beta"
        else:
            hint = "A smaller model.lr or trainer.gradient_clip_val=1.0 may help"
        raise DivergenceError(
            f"the training loss was not finite at step {step}, so training stopped. "
            f"The last good checkpoint: {last_good}. {hint}; trainer.detect_anomaly=true "
            "names the operation that first gave a NaN."
        )
