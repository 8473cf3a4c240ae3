"""Test-only pieces that a run can be told to use through its config (`_target_`)."""

import hashlib
import json
import os
import signal
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

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

    def _shared_step(self, x: Tensor, stage: str, weight: float = 1.0) -> Tensor:
        loss = super()._shared_step(x, stage, weight)
        if stage == "train" and self.global_step >= self.explode_at_step:
            return loss * torch.nan
        return loss


class RecordExamples(L.Callback):
    """Write a fingerprint of each training example this process sees, one file an epoch."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.seen: list[str] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: object, batch: Tensor, *args: object
    ) -> None:
        self.seen += [hashlib.md5(row.cpu().numpy().tobytes()).hexdigest() for row in batch]

    def on_train_epoch_end(self, trainer: L.Trainer, *args: object) -> None:
        name = f"seen-epoch{trainer.current_epoch}-rank{trainer.global_rank}.json"
        (self.folder / name).write_text(json.dumps(self.seen))
        self.seen = []
