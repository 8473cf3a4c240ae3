"""The LightningModule: trains a VAE by minimizing the negative ELBO."""

import math
from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
from torch import Tensor

from vaelab import UserError
from vaelab.losses import bernoulli_nll, gaussian_kl
from vaelab.networks import Decoder, Encoder, reparameterize

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
Stage = Literal["train", "val", "test"]


class VAEModule(L.LightningModule):
    """A VAE (Kingma & Welling 2014) with MLP encoder and decoder and Bernoulli pixels."""

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (400,),
        latent_size: int = 20,
        beta: float = 1.0,
        lr: float = 1e-3,
        optimizer: str = "adam",
        compile: bool = False,
        image_shape: Sequence[int] = (1, 28, 28),
    ) -> None:
        """Args:
        hidden_sizes: encoder widths from input to latent; the decoder mirrors them.
        beta: weight of the KL term in the optimized objective (beta-VAE); 1 is the ELBO.
        optimizer: one of "adam", "adamw", "sgd".
        compile: wrap encoder and decoder in torch.compile (worth it on a GPU).
        """
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise UserError(
                f"model.optimizer={optimizer!r} is unknown; use one of {list(OPTIMIZERS)}"
            )
        hidden_sizes, image_shape = list(hidden_sizes), list(image_shape)  # plain lists for hparams
        self.save_hyperparameters()
        input_size = math.prod(image_shape)
        self.encoder = Encoder(input_size, hidden_sizes, latent_size)
        self.decoder = Decoder(latent_size, hidden_sizes[::-1], input_size)
        if compile:  # in place, so checkpoints keep their keys; dynamic: the last batch is smaller
            self.encoder.compile(dynamic=True)
            self.decoder.compile(dynamic=True)
        self._totals: dict[str, Tensor] = {}  # per stage: summed recon and KL of the epoch
        self._counts: dict[str, int] = {}  # per stage: examples seen in the epoch

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pixel logits of a reconstruction from one sample of q(z|x), with q's mean and logvar."""
        mean, logvar = self.encoder(x)
        return self.decoder(reparameterize(mean, logvar)), mean, logvar

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def _shared_step(self, x: Tensor, stage: Stage) -> Tensor:
        """Add this batch's loss terms to the epoch's totals; return the mean objective."""
        logits, mean, logvar = self(x)
        recon, kl = bernoulli_nll(logits, x), gaussian_kl(mean, logvar)  # (B,) each
        # Summed here and logged once per epoch: a self.log call costs about as much as a
        # tenth of this network's training step on a CPU, and would read the value each step.
        sums = torch.stack([recon.detach().sum(), kl.detach().sum()])
        self._totals[stage] = self._totals.get(stage, 0) + sums
        self._counts[stage] = self._counts.get(stage, 0) + len(x)
        return (recon + self.hparams.beta * kl).mean()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def _log_epoch(self, stage: Stage) -> None:
        """Log the epoch's means per example, summed over all processes first."""
        sums = self._totals.pop(stage)
        totals = torch.cat([sums, sums.new_tensor([self._counts.pop(stage)])])
        recon, kl, count = self.trainer.strategy.reduce(totals, reduce_op="sum")
        metrics = {f"{stage}/recon": recon / count, f"{stage}/kl": kl / count}
        if stage == "train":
            metrics["train/objective"] = (recon + self.hparams.beta * kl) / count
        # Every process holds the same sums now; sync_dist only keeps Lightning from warning.
        self.log_dict(metrics, sync_dist=True)
        self.log(f"{stage}/loss", (recon + kl) / count, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return OPTIMIZERS[self.hparams.optimizer](self.parameters(), lr=self.hparams.lr)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x): (B, 1, 28, 28) -> 2 x (B, latent)."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Pixel probabilities of p(x|z): (B, latent) -> (B, 1, 28, 28)."""
        return torch.sigmoid(self.decoder(z)).view(-1, *self.hparams.image_shape)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decode the mean of q(z|x): a deterministic reconstruction."""
        return self.decode(self.encode(x)[0])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode n draws from the prior N(0, I)."""
        z = torch.randn(n, self.hparams.latent_size, generator=generator, device=self.device)
        return self.decode(z)
