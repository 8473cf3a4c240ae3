"""Exact resume, and never a diverged state saved: last.ckpt where training stands, torch's
random state in it, and a stop at the first non-finite loss."""

import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vaelab.errors import UserError


class DivergenceError(UserError):
    """Training produced a non-finite loss; reported like a user error, without a traceback."""


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
