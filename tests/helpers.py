"""Test-only pieces that a run can be told to use through its config (`_target_`)."""

import builtins
import hashlib
import io
import json
import os
import signal
import time
import types
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, timer
from torch import Tensor

from vaelab.batches import InMemoryBatches
from vaelab.module import VAEModule


class KillAtStep(L.Callback):
    """Send this process a signal after training step `step`, as a crash or a scheduler would."""

    def __init__(self, step: int, signal_name: str = "SIGKILL") -> None:
        self.step = step
        self.signal = getattr(signal, signal_name)

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)


class ExplodingVAE(VAEModule):
    """A VAE whose loss turns to NaN from training step `explode_at_step` on."""

    def __init__(self, explode_at_step: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.explode_at_step = explode_at_step

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        outputs = super().training_step(batch, batch_idx)
        if self.global_step >= self.explode_at_step:
            outputs["loss"] = outputs["loss"] * torch.nan
        return outputs


def mlp_vae(hidden_sizes: list[int] | None = None, **kwargs: object) -> VAEModule:
    """A VAE of MLPs of these widths: the encoder's, and the decoder's in reverse."""
    widths = hidden_sizes or [400]
    encoder = {"_target_": "vaelab.networks.MLPEncoder", "hidden_sizes": widths}
    decoder = {"_target_": "vaelab.networks.MLPDecoder", "hidden_sizes": widths[::-1]}
    return VAEModule(encoder=encoder, decoder=decoder, **kwargs)


def conv_vae(channels: list[int], **kwargs: object) -> VAEModule:
    """A VAE of convolutions with these channels: the encoder's, and the decoder's in reverse."""
    encoder = {"_target_": "vaelab.networks.ConvEncoder", "channels": channels}
    decoder = {"_target_": "vaelab.networks.ConvDecoder", "channels": channels[::-1]}
    return VAEModule(encoder=encoder, decoder=decoder, **kwargs)


class RecordExamples(L.Callback):
    """Write a fingerprint of each training example this process sees, one file an epoch."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.seen: list[str] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: object, batch: tuple[Tensor, Tensor], *args: object
    ) -> None:
        images, labels = batch
        self.seen += [hashlib.md5(row.cpu().numpy().tobytes()).hexdigest() for row in images]

    def on_train_epoch_end(self, trainer: L.Trainer, *args: object) -> None:
        name = f"seen-epoch{trainer.current_epoch}-rank{trainer.global_rank}.json"
        (self.folder / name).write_text(json.dumps(self.seen))
        self.seen = []


class KillDuringSave(L.Callback):
    """SIGKILL this process while it writes a `last.ckpt...` file for the `nth` time: as the
    file is opened (`at="open"`), or once it is written and closed (`at="close"`). Every file
    so named counts, the checkpoint itself and any temporary file named after it."""

    def __init__(self, nth: int = 2, at: str = "open") -> None:
        self.nth, self.at, self.opened = nth, at, 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        real_open = builtins.open

        def open_and_kill(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            named = isinstance(file, str | os.PathLike)
            if named and "w" in mode and Path(file).name.startswith("last.ckpt"):
                self.opened += 1
                if self.opened == self.nth and self.at == "open":
                    real_open(file, mode, *args, **kwargs)  # created, or emptied
                    os.kill(os.getpid(), signal.SIGKILL)
                if self.opened == self.nth:
                    return io.BufferedWriter(KilledOnClose(file, "w"))
            return real_open(file, mode, *args, **kwargs)

        builtins.open = open_and_kill


class KilledOnClose(io.FileIO):
    """A file written as any other, whose closing SIGKILLs this process."""

    def close(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class ClockJumpAtStep(L.Callback):
    """Move the clock of Lightning's Timer (`trainer.max_time`) `seconds` on before training
    step `step`, as if the step took that long; no other clock changes."""

    def __init__(self, step: int, seconds: float) -> None:
        self.step, self.seconds, self.offset = step, seconds, 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        real = time.monotonic
        timer.time = types.SimpleNamespace(monotonic=lambda: real() + self.offset)

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            self.offset += self.seconds


class RecordSchedule(L.Callback):
    """Write `schedule.json` into `folder` when training ends: each batch's epoch, optimizer
    step and KL weight, and each checkpoint saved, by file name and optimizer step."""

    def __init__(self, folder: str) -> None:
        self.path = Path(folder) / "schedule.json"
        self.batches: list[tuple[int, int, float]] = []
        self.saves: list[tuple[str, int]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        save = trainer.save_checkpoint

        def record_and_save(filepath: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
            self.saves.append((Path(filepath).name, trainer.global_step))
            save(filepath, *args, **kwargs)

        trainer.save_checkpoint = record_and_save

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: VAEModule, *args: object) -> None:
        weight = pl_module.current_kl_weight()
        self.batches.append((trainer.current_epoch, trainer.global_step, weight))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path.write_text(json.dumps({"batches": self.batches, "saves": self.saves}))


class SignalAtEvaluation(L.Callback):
    """Copy last.ckpt to `copy_to` as training left it, then send this process a signal as the
    first batch of the test (`stage="test"`) or of fit's validation (`"val"`) in `epoch` starts."""

    def __init__(
        self,
        dirpath: str,
        copy_to: str,
        stage: str = "test",
        epoch: int = 0,
        signal_name: str = "SIGINT",
    ) -> None:
        self.last, self.copy_to = Path(dirpath) / "last.ckpt", Path(copy_to)
        self.stage, self.epoch, self.signal = stage, epoch, getattr(signal, signal_name)

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        in_fit = not trainer.sanity_checking and trainer.current_epoch == self.epoch
        if self.stage == "val" and in_fit and batch_idx == 0:
            self.copy_and_signal()

    def on_test_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        _, _, batch_idx, *_ = args  # pl_module, batch, batch_idx[, dataloader_idx]
        if self.stage == "test" and batch_idx == 0:
            self.copy_and_signal()

    def copy_and_signal(self) -> None:
        if self.last.exists():
            self.copy_to.write_bytes(self.last.read_bytes())
        os.kill(os.getpid(), self.signal)


# A tiny model, data and Trainer for in-process tests of callbacks.
SHAPE = (1, 6, 6)
TINY = {"hidden_sizes": [8], "latent_size": 2, "image_shape": SHAPE}


def batches(count: int = 20, batch_size: int = 4) -> InMemoryBatches:
    """`count` random images in [0, 1] with labels 0..9, `count // batch_size` batches."""
    images = torch.rand(count, *SHAPE, generator=torch.Generator().manual_seed(0))
    return InMemoryBatches(images, torch.arange(count) % 10, batch_size, shuffle=False)


def trainer(tmp_path: Path, callbacks: list, **flags: object) -> L.Trainer:
    """A CPU trainer of one epoch without validation, loggers or checkpoints but `callbacks`'."""
    settings = {
        "max_epochs": 1,
        "limit_val_batches": 0,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        # Lightning adds a ModelCheckpoint unless a Checkpoint (LastCheckpoint is one) is given.
        "enable_checkpointing": any(isinstance(c, Checkpoint) for c in callbacks),
        **flags,
    }
    return L.Trainer(
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **settings,
    )


def fit_one_step(model: L.LightningModule, datamodule: L.LightningDataModule) -> L.Trainer:
    """Fit `model` for one optimizer step (on a GPU if there is one), without validation,
    logger or files."""
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer


class OneOutputDecoder(torch.nn.Module):
    """A decoder of one's own that knows nothing of outputs_per_value: one output per pixel."""

    def __init__(self, image_shape: tuple[int, ...], latent_size: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(latent_size, int(torch.tensor(image_shape).prod()))

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        return self.linear(z)
