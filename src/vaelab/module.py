"""The LightningModule: trains a VAE or one of its variants by minimizing its objective."""

import math
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from torch.distributions import ContinuousBernoulli

from vaelab import UserError, require
from vaelab.losses import (
    bernoulli_nll,
    continuous_bernoulli_nll,
    gaussian_kl,
    iw_log_likelihood,
    kl_weight,
    log_importance_weights,
)
from vaelab.networks import ConvDecoder, ConvEncoder, Decoder, Encoder, reparameterize


class DivergenceError(UserError):
    """Training produced a non-finite loss; reported like a user error, without a traceback."""


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
NETWORKS = ("mlp", "conv")
LIKELIHOODS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "bernoulli": bernoulli_nll,
    "continuous_bernoulli": continuous_bernoulli_nll,
}
Stage = Literal["train", "val", "test"]


class VAEModule(L.LightningModule):
    """A VAE (Kingma & Welling 2014): MLP or convolutional, optionally conditional, beta or IWAE."""

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (400,),
        latent_size: int = 20,
        network: str = "mlp",
        num_classes: int = 0,
        likelihood: str = "bernoulli",
        beta: float = 1.0,
        kl_warmup_epochs: int = 0,
        iw_samples: int = 1,
        lr: float = 1e-3,
        optimizer: str = "adam",
        compile: bool = False,
        image_shape: Sequence[int] = (1, 28, 28),
    ) -> None:
        """Args:
        hidden_sizes: "mlp": encoder widths from input to latent, the decoder mirrors them;
            "conv": encoder channels, one stride-2 convolution each, the decoder mirrors them.
        network: "mlp" or "conv".
        num_classes: above 0, a conditional VAE (Sohn et al. 2015): encoder and decoder also
            get the one-hot label, and training batches are (images, labels) pairs.
        likelihood: p(x|z) of each pixel: "bernoulli" (the chapter's) or
            "continuous_bernoulli" (Loaiza-Ganem & Cunningham 2019), a density on [0, 1].
        beta: weight of the KL term in the optimized objective (beta-VAE); 1 is the ELBO.
        kl_warmup_epochs: the KL weight rises linearly from 0 to beta over these epochs.
        iw_samples: K above 1 trains on the importance-weighted bound L_K (IWAE, Burda et al.
            2015) instead of the ELBO; 1 is the VAE.
        optimizer: one of "adam", "adamw", "sgd".
        compile: wrap encoder and decoder in torch.compile (worth it on a GPU).
        """
        super().__init__()
        require(latent_size >= 1, "latent_size", latent_size, "use a positive integer")
        require(
            len(hidden_sizes) > 0 and all(h >= 1 for h in hidden_sizes),
            "hidden_sizes", hidden_sizes, "use a non-empty list of positive widths, e.g. [400]",
        )  # fmt: skip
        require(network in NETWORKS, "network", network, f"use {' or '.join(NETWORKS)}")
        side = image_shape[-1]
        require(
            network != "conv" or side % 2 ** len(hidden_sizes) == 0,
            "hidden_sizes", hidden_sizes,
            f"each convolution halves the {side}x{side} image, so give at most "
            f"{(side & -side).bit_length() - 1} channel counts, e.g. [32, 64]",
        )  # fmt: skip
        require(num_classes >= 0, "num_classes", num_classes, "use 0 (unconditional) or more")
        accepted = " or ".join(LIKELIHOODS)
        require(likelihood in LIKELIHOODS, "likelihood", likelihood, f"use {accepted}")
        require(beta >= 0, "beta", beta, "use a weight >= 0 (1 is the plain VAE)")
        require(kl_warmup_epochs >= 0, "kl_warmup_epochs", kl_warmup_epochs, "use 0 (none) or more")
        require(iw_samples >= 1, "iw_samples", iw_samples, "use 1 (the VAE) or more, e.g. 5")
        require(lr > 0, "lr", lr, "use a learning rate > 0, e.g. 1e-3")
        require(optimizer in OPTIMIZERS, "optimizer", optimizer, f"use {' or '.join(OPTIMIZERS)}")
        hidden_sizes, image_shape = list(hidden_sizes), list(image_shape)  # plain lists for hparams
        self.save_hyperparameters()
        if network == "mlp":
            input_size = math.prod(image_shape)
            self.encoder = Encoder(input_size, hidden_sizes, latent_size, num_classes)
            self.decoder = Decoder(latent_size, hidden_sizes[::-1], input_size, num_classes)
        else:
            self.encoder = ConvEncoder(image_shape, hidden_sizes, latent_size, num_classes)
            self.decoder = ConvDecoder(latent_size, hidden_sizes[::-1], image_shape, num_classes)
        if compile:  # in place, so checkpoints keep their keys; dynamic: the last batch is smaller
            self.encoder.compile(dynamic=True)
            self.decoder.compile(dynamic=True)
        self.nll = LIKELIHOODS[likelihood]  # -log p(x|z) from the decoder's logits, per example
        self._totals: dict[str, Tensor] = {}  # per stage: summed recon, KL, objective of the epoch
        self._counts: dict[str, int] = {}  # per stage: examples seen in the epoch
        self._bad_step = torch.tensor(-1)  # the first step with a non-finite loss, or -1
        self._resumed: dict[str, Any] | None = None  # state to restore when training starts

    @property
    def needs_labels(self) -> bool:
        """Whether batches must be (images, labels) pairs: the DataModule asks this."""
        return self.hparams.num_classes > 0

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Pixel logits of a reconstruction from one sample of q(z|x), with q's mean and logvar."""
        c = self._condition(labels, len(x))
        mean, logvar = self.encoder(x, c)
        return self.decoder(reparameterize(mean, logvar), c), mean, logvar

    def training_step(self, batch: Tensor | tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        objective = self._shared_step(batch, "train", self._kl_weight())
        # The first step whose loss is not finite, tracked on the device: no host sync per step.
        finite = torch.isfinite(objective) | (self._bad_step >= 0)
        self._bad_step = torch.where(finite, self._bad_step, self.global_step)
        return objective

    def validation_step(self, batch: Tensor | tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Tensor | tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def _shared_step(
        self, batch: Tensor | tuple[Tensor, Tensor], stage: Stage, weight: float = 1.0
    ) -> Tensor:
        """Add this batch's loss terms to the epoch's totals; return the mean objective.

        The objective is the negative ELBO with its KL weighted by `weight`, or in training
        with iw_samples = K > 1 the negative bound L_K. The logged recon and KL are always
        the true negative ELBO's terms (recon averaged over the K draws).
        """
        x, labels = self.split_batch(batch)
        k = self.hparams.iw_samples if stage == "train" else 1
        if k == 1:  # the ELBO with its KL in closed form: the VAE's lower-variance estimate
            recon, kl = self.loss_terms(x, labels)  # (B,) each
            objective = recon + weight * kl
        else:  # apart from K = 1: (1, B, ...) tensors would slow this small network's step
            c = self._condition(labels, len(x))
            mean, logvar = self.encoder(x, c)  # (B, latent) each
            kl = gaussian_kl(mean, logvar)  # (B,)
            z = reparameterize(mean.expand(k, *mean.shape), logvar.expand(k, *logvar.shape))
            nll = self.nll(self.decoder(z, c), x)  # (K, B, latent) -> (K, B, 784) -> (K, B)
            recon = nll.mean(0)  # (B,)
            objective = -iw_log_likelihood(log_importance_weights(-nll, z, mean, logvar, weight))
        # Summed here and logged once per epoch: a self.log call costs about as much as a
        # tenth of this network's training step on a CPU, and would read the value each step.
        sums = torch.stack([recon.sum(), kl.sum(), objective.sum()]).detach()
        self._totals[stage] = self._totals.get(stage, 0) + sums
        self._counts[stage] = self._counts.get(stage, 0) + len(x)
        return objective.mean()

    def _kl_weight(self) -> float:
        """The KL weight of the current training step: beta, after the warm-up's linear rise."""
        epochs_done = self.global_step / self.trainer.num_training_batches
        return kl_weight(self.hparams.beta, self.hparams.kl_warmup_epochs, epochs_done)

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
        recon, kl, objective, count = self.trainer.strategy.reduce(totals, reduce_op="sum")
        metrics = {f"{stage}/recon": recon / count, f"{stage}/kl": kl / count}
        if stage == "train":  # what was optimized, e.g. with beta, warm-up or K > 1
            metrics["train/objective"] = objective / count
            if self.hparams.kl_warmup_epochs:
                metrics["train/kl_weight"] = self._kl_weight()  # where the epoch ended
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
            "totals": self._totals.get("train", torch.zeros(3)).cpu(),
            "count": self._counts.get("train", 0),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resumed = checkpoint.get("resume")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return OPTIMIZERS[self.hparams.optimizer](self.parameters(), lr=self.hparams.lr)

    def split_batch(self, batch: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
        """(images, labels) from a batch; labels are None unless the model is conditional."""
        return batch if self.needs_labels else (batch, None)

    def _condition(self, labels: Tensor | None, n: int) -> Tensor | None:
        """The one-hot labels a conditional model is given, (n,) -> (n, num_classes)."""
        if not self.needs_labels:
            if labels is not None:
                raise UserError("labels were given, but this model is not conditional: omit them")
            return None
        if labels is None or labels.shape != (n,):
            got = "none" if labels is None else f"shape {tuple(labels.shape)}"
            raise UserError(f"this conditional model needs labels=... of shape ({n},), got {got}")
        return F.one_hot(labels.to(self.device), self.hparams.num_classes).to(self.dtype)

    def loss_terms(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The negative ELBO's terms per example, recon from one draw of q(z|x): 2 x (B,)."""
        logits, mean, logvar = self(x, labels)
        return self.nll(logits, x), gaussian_kl(mean, logvar)

    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x): (B, 1, 28, 28) -> 2 x (B, latent)."""
        return self.encoder(x, self._condition(labels, len(x)))

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Pixel means of p(x|z): (B, latent) -> (B, 1, 28, 28)."""
        logits = self.decoder(z, self._condition(labels, len(z)))  # (B, 784)
        if self.hparams.likelihood == "bernoulli":
            means = torch.sigmoid(logits)
        else:  # the continuous Bernoulli's mean is not sigmoid(logits), its parameter
            means = ContinuousBernoulli(logits=logits.float()).mean
        return means.view(-1, *self.hparams.image_shape)

    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Decode the mean of q(z|x): a deterministic reconstruction."""
        return self.decode(self.encode(x, labels)[0], labels)

    def sample(
        self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Decode n draws from the prior N(0, I); a conditional model needs n labels (n,)."""
        z = torch.randn(n, self.hparams.latent_size, generator=generator, device=self.device)
        return self.decode(z, labels)

    @torch.no_grad()
    def log_likelihood(
        self, x: Tensor, k: int, chunk_size: int = 100, generator: torch.Generator | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """The importance-weighted estimate of log p(x) from k draws of q(z|x): (B, ...) -> (B,).

        In nats per example; see `iw_log_likelihood`. The k draws are decoded chunk_size at a
        time, so memory holds chunk_size * B * 784 values whatever k is. Each draw's noise is
        its own (B, latent) tensor from `generator` (default: torch's global one), so the
        result does not depend on chunk_size, and a CPU generator serves a model on a GPU.
        A conditional model estimates log p(x|label).
        """
        require(k >= 1, "k", k, "use a positive number of samples, e.g. 1000")
        require(chunk_size >= 1, "chunk_size", chunk_size, "use a positive integer, e.g. 100")
        c = self._condition(labels, len(x))
        mean, logvar = self.encoder(x, c)  # (B, latent) each
        std = torch.exp(0.5 * logvar)
        noise_device = mean.device if generator is None else generator.device

        def draw() -> Tensor:  # one draw's noise: (B, latent)
            return torch.randn(mean.shape, generator=generator, device=noise_device).to(mean)

        def log_weights() -> Iterator[Tensor]:
            for start in range(0, k, chunk_size):
                n = min(chunk_size, k - start)
                z = mean + std * torch.stack([draw() for _ in range(n)])  # (n, B, latent)
                log_px_z = -self.nll(self.decoder(z, c), x)  # (n, B, 784) -> (n, B)
                yield log_importance_weights(log_px_z, z, mean, logvar)  # (n, B)

        return iw_log_likelihood(log_weights())


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at `path`, loaded with weights_only=True; a UserError if it cannot be."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"the checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as err:  # torch's message would advise weights_only=False
        reason = str(err).partition("WeightsUnpickler error:")[2].strip()
        detail = reason.partition("\n")[0].partition(". ")[0]  # without torch's advice
        if detail.startswith("Unsupported global"):  # a real pickle, holding more than data
            raise UserError(
                f"{path} is not a checkpoint of this project: it holds Python objects that "
                f"safe loading refuses ({detail})"
            ) from None
        why = f" ({detail})" if detail else ""
        raise UserError(
            f"{path} is not a readable checkpoint: not a file torch.save wrote, or damaged{why}"
        ) from None
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
