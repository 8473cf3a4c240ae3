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
