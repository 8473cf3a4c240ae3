"""The LightningModule: trains a VAE by minimizing the negative ELBO."""

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from vaelab import UserError, require
from vaelab.losses import bernoulli_nll, gaussian_kl, iw_log_likelihood, log_importance_weights
from vaelab.networks import Decoder, Encoder, reparameterize


class DivergenceError(UserError):
    """Training produced a non-finite loss; reported like a user error, without a traceback."""


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
        require(latent_size >= 1, "latent_size", latent_size, "use a positive integer")
        require(
            len(hidden_sizes) > 0 and all(h >= 1 for h in hidden_sizes),
            "hidden_sizes", hidden_sizes, "use a non-empty list of positive widths, e.g. [400]",
        )  # fmt: skip
        require(beta >= 0, "beta", beta, "use a weight >= 0 (1 is the plain VAE)")
        require(lr > 0, "lr", lr, "use a learning rate > 0, e.g. 1e-3")
        require(optimizer in OPTIMIZERS, "optimizer", optimizer, f"use {' or '.join(OPTIMIZERS)}")
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
        self._bad_step = torch.tensor(-1)  # the first step with a non-finite loss, or -1
        self._resumed: dict[str, Any] | None = None  # state to restore when training starts

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pixel logits of a reconstruction from one sample of q(z|x), with q's mean and logvar."""
        mean, logvar = self.encoder(x)
        return self.decoder(reparameterize(mean, logvar)), mean, logvar

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        objective = self._shared_step(batch, "train")
        # The first step whose loss is not finite, tracked on the device: no host sync per step.
        finite = torch.isfinite(objective) | (self._bad_step >= 0)
        self._bad_step = torch.where(finite, self._bad_step, self.global_step)
        return objective

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

    def on_train_start(self) -> None:
        self._bad_step = torch.tensor(-1, device=self.device)
        if self._resumed is not None:  # continue exactly where the checkpoint left off
            torch.set_rng_state(self._resumed["rng"])
            if self._resumed["cuda_rng"]:
                torch.cuda.set_rng_state_all(self._resumed["cuda_rng"])
            if self._resumed["count"]:
                self._totals["train"] = self._resumed["totals"].to(self.device)
                self._counts["train"] = self._resumed["count"]
            self._resumed = None

    def on_train_batch_end(self, outputs: Tensor, batch: Tensor, batch_idx: int) -> None:
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self._check_finite()

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

    def _check_finite(self) -> None:
        """Stop with a DivergenceError once a training loss has not been finite."""
        if (step := int(self._bad_step)) < 0:
            return
        saved = [
            path
            for callback in self.trainer.checkpoint_callbacks
            if isinstance(callback, ModelCheckpoint)
            for path in (callback.last_model_path, callback.best_model_path)
            if path and os.path.exists(path)
        ]
        last_good = max(saved, key=os.path.getmtime) if saved else "none was saved"
        raise DivergenceError(
            f"the training loss was not finite at step {step}, so training stopped. "
            f"The last good checkpoint: {last_good}. A smaller model.lr may help."
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_finite()  # a diverged state never overwrites a good checkpoint
        # What, beyond Lightning's own state, a run resumed mid-epoch needs to continue
        # exactly: the random state (for the reparameterization noise) and the epoch's sums.
        checkpoint["resume"] = {
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "totals": self._totals.get("train", torch.zeros(2)).cpu(),
            "count": self._counts.get("train", 0),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resumed = checkpoint.get("resume")

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

    @torch.no_grad()
    def log_likelihood(
        self, x: Tensor, k: int, chunk_size: int = 100, generator: torch.Generator | None = None
    ) -> Tensor:
        """The importance-weighted estimate of log p(x) from k draws of q(z|x): (B, ...) -> (B,).

        In nats per example; see `iw_log_likelihood`. The k draws are decoded chunk_size at a
        time, so memory holds chunk_size * B * 784 values whatever k is. Each draw's noise is
        its own (B, latent) tensor from `generator` (default: torch's global one), so the
        result does not depend on chunk_size, and a CPU generator serves a model on a GPU.
        """
        require(k >= 1, "k", k, "use a positive number of samples, e.g. 1000")
        require(chunk_size >= 1, "chunk_size", chunk_size, "use a positive integer, e.g. 100")
        mean, logvar = self.encode(x)  # (B, latent) each
        std = torch.exp(0.5 * logvar)
        noise_device = mean.device if generator is None else generator.device

        def draw() -> Tensor:  # one draw's noise: (B, latent)
            return torch.randn(mean.shape, generator=generator, device=noise_device).to(mean)

        def log_weights() -> Iterator[Tensor]:
            for start in range(0, k, chunk_size):
                n = min(chunk_size, k - start)
                z = mean + std * torch.stack([draw() for _ in range(n)])  # (n, B, latent)
                logits = self.decoder(z)  # (n, B, latent) -> (n, B, 784)
                yield log_importance_weights(logits, x, z, mean, logvar)  # (n, B)

        return iw_log_likelihood(log_weights())


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at `path`, loaded with weights_only=True; a UserError if it cannot be."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"the checkpoint {path} does not exist") from None
    except Exception as err:  # truncated, corrupted, or some other kind of file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is not a readable checkpoint ({first_line})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{path} is not a Lightning checkpoint: it holds no state_dict")
    return checkpoint


def check_checkpoint(path: str | os.PathLike, model: VAEModule) -> None:
    """Raise a UserError naming the settings that differ unless `model` can load `path`."""
    checkpoint = read_checkpoint(path)
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    theirs = {name: tuple(t.shape) for name, t in checkpoint["state_dict"].items()}
    if ours != theirs:
        saved = checkpoint.get("hyper_parameters", {})
        differences = [
            f"model.{key}={saved.get(key)!r} there, {value!r} here"
            for key, value in model.hparams.items()
            if saved.get(key) != value
        ]
        raise UserError(
            f"{path} holds a model of another shape ({'; '.join(differences) or 'other layers'}). "
            "Resume with the settings it was trained with, or start a new run."
        )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> VAEModule:
    """A trained VAEModule from its checkpoint, for inference; a UserError if it is unusable."""
    read_checkpoint(path)
    return VAEModule.load_from_checkpoint(path, map_location=map_location, weights_only=True)
