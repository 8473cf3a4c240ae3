"""The LightningModule: a VAE assembled from its parts, and the objective it minimizes.

Its metrics are the epoch means of the fields of `vaelab.losses.Terms`, logged as stage/field:
a new term is a field there, filled in `VAEModule.loss_terms`, and nothing else changes.
"""

import inspect
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import IO, Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from vaelab.errors import UserError, require
from vaelab.losses import (
    Terms,
    gaussian_log_prob,
    iw_log_likelihood,
    kl_weight,
    log_importance_weights,
)
from vaelab.metrics import EpochSums
from vaelab.networks import reparameterize
from vaelab.parts import build_part, check_optimizer, check_targets, check_trust, part_class
from vaelab.schedules import check_scheduler

MLP_ENCODER = {"_target_": "vaelab.networks.MLPEncoder"}  # the parts' defaults: 400 units, ReLU
MLP_DECODER = {"_target_": "vaelab.networks.MLPDecoder"}
STANDARD_PRIOR = {"_target_": "vaelab.priors.StandardNormal"}
BERNOULLI = {"_target_": "vaelab.likelihoods.Bernoulli"}
ADAM = {"_target_": "torch.optim.Adam", "fused": True}
FUSED_DEVICES = ("cpu", "cuda")  # where torch has fused Adam/AdamW kernels for float32 weights
Stage = Literal["train", "val", "test"]
# Where a user sets what the VAE gives a scheduler; outside a fit, a stand-in for the steps.
SET_BY = {"total_steps": "trainer.max_steps or trainer.max_epochs", "max_lr": "model.lr"}
STAND_IN_STEPS = 1000
# While `VAEModule.load_from_checkpoint` runs: the checkpoint, and the modules its caller trusts.
LOADING: ContextVar[tuple[str, Sequence[str]] | None] = ContextVar("loading", default=None)


class VAEModule(L.LightningModule):
    """A VAE (Kingma & Welling 2014) of an encoder, a decoder, a prior and a likelihood."""

    def __init__(
        self,
        latent_size: int = 20,
        encoder: Mapping[str, Any] = MLP_ENCODER,
        decoder: Mapping[str, Any] = MLP_DECODER,
        prior: Mapping[str, Any] = STANDARD_PRIOR,
        likelihood: Mapping[str, Any] = BERNOULLI,
        conditional: bool = False,
        beta: float = 1.0,
        kl_warmup_epochs: int = 0,
        iw_samples: int = 1,
        lr: float = 1e-3,
        optimizer: Mapping[str, Any] = ADAM,
        scheduler: Mapping[str, Any] | None = None,
        compile: bool = False,
        image_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 0,
    ) -> None:
        """Args:
        encoder, decoder, prior, likelihood: each a part's config (see `vaelab.parts`).
        optimizer, scheduler: a torch optimizer's config, given the parameters and `lr`, and
            a learning-rate scheduler's, given the optimizer; None or {}: a constant lr.
        conditional: encoder and decoder also get the one-hot label (Sohn et al. 2015).
        beta, kl_warmup_epochs: the KL's weight in the objective (beta-VAE), reached linearly
            over the warm-up's epochs.
        iw_samples: K > 1 trains on the K-sample bound L_K (IWAE, Burda et al. 2015).
        image_shape, num_classes: what the data holds; the DataModule states them.
        """
        super().__init__()
        require(latent_size >= 1, "latent_size", latent_size, "use a positive integer")
        require(num_classes >= 0, "num_classes", num_classes, "use 0 (no labels) or more")
        labelled = not conditional or num_classes >= 1
        require(labelled, "conditional", conditional, "the data has no labels to condition on")
        require(0 <= beta < math.inf, "beta", beta, "use a weight >= 0 (1 is the plain VAE)")
        require(kl_warmup_epochs >= 0, "kl_warmup_epochs", kl_warmup_epochs, "use 0 (none) or more")
        require(iw_samples >= 1, "iw_samples", iw_samples, "use 1 (the VAE) or more, e.g. 5")
        require(0 < lr < math.inf, "lr", lr, "use a learning rate > 0, e.g. 1e-3")
        encoder, decoder, prior, likelihood, optimizer = map(
            dict, (encoder, decoder, prior, likelihood, optimizer)
        )
        scheduler = dict(scheduler or {})
        image_shape = list(image_shape)  # plain values for the hyperparameters
        self.save_hyperparameters()
        if loading := LOADING.get():  # a checkpoint's parts: built only if known to be safe
            check_targets(loading[0], self.hparams, loading[1])
        size = num_classes if conditional else 0
        context = {"image_shape": image_shape, "latent_size": latent_size, "condition_size": size}
        # The likelihood first: how many of the decoder's outputs it takes per pixel value. It is
        # registered last, as ever, so that the parameters keep their order in the optimizer.
        likelihood_part = build_part("likelihood", likelihood, context)
        outputs = getattr(likelihood_part, "outputs_per_value", 1)
        self.encoder = build_part("encoder", encoder, context)
        self.decoder = build_part("decoder", decoder, {**context, "outputs_per_value": outputs})
        self.prior = build_part("prior", prior, {**context, "encoder": self.encoder})
        self.likelihood = likelihood_part
        takes = inspect.signature(type(self.decoder)).parameters
        if outputs > 1 and "outputs_per_value" not in takes:
            raise UserError(
                f"decoder._target_={decoder['_target_']!r} gives one output per pixel value, "
                f"but model.likelihood takes {outputs}: give the decoder an outputs_per_value "
                "argument (as vaelab.networks' decoders have), or use another likelihood"
            )
        self.build_optimizers()  # so that a bad optimizer or scheduler setting is named now
        self.epoch_sums = EpochSums(Terms._fields)  # what each epoch logs, per stage
        self.resumed_sums: dict[str, Any] | None = None  # a checkpoint's, until training starts
        if compile:  # in place, so checkpoints keep their keys; dynamic: the last batch is smaller
            self.encoder.compile(dynamic=True)
            self.decoder.compile(dynamic=True)

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike | IO,
        map_location: Any = None,
        hparams_file: str | os.PathLike | None = None,
        strict: bool | None = None,
        weights_only: bool = True,
        trust: Sequence[str] = (),
        **kwargs: Any,
    ) -> "VAEModule":
        """Lightning's, but the parts, optimizer and scheduler that the checkpoint names are
        built only if they are vaelab's or torch's, or classes of the modules in `trust`
        (e.g. `trust=["my_priors"]`): a checkpoint could name any callable. The file is read
        with weights_only=True whatever torch's default, as it holds only plain values."""
        check_trust(trust)
        token = LOADING.set((str(checkpoint_path), list(trust)))
        try:
            return super().load_from_checkpoint(
                checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs
            )
        finally:
            LOADING.reset(token)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Pixel logits of a reconstruction from one sample of q(z|x), with q's mean and logvar."""
        c = self._condition(labels, len(x))
        mean, logvar = self.encoder(x, c)
        return self.decoder(reparameterize(mean, logvar), c), mean, logvar

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "test")

    def _step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> dict[str, Tensor]:
        """The mean objective (in training the configured one, else the negative ELBO, so that
        val/loss compares across variants); each term's sum goes into the epoch's."""
        x, labels = batch
        labels = labels if self.hparams.conditional else None
        if stage == "train":
            terms = self.loss_terms(x, labels, self.hparams.iw_samples, self.current_kl_weight())
        else:
            terms = self.loss_terms(x, labels)
        self.epoch_sums.add(stage, terms)
        return {"loss": terms.objective.mean()}

    def on_train_epoch_end(self) -> None:
        self.log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    def log_epoch(self, stage: Stage) -> None:
        """Log the epoch's mean per example of each term, over all processes, the loss (the
        negative ELBO) and the loss in bits per dimension; the objective only in training,
        where beta, a warm-up or K > 1 make it differ from the loss. The sums are read here,
        once per epoch: a `self.log` per step would read each step's value, and on a GPU wait
        for the step to finish."""
        sums = self.trainer.strategy.reduce(self.epoch_sums.pop(stage), reduce_op="sum")
        totals, count = dict(zip(self.epoch_sums.names, sums[:-1], strict=True)), sums[-1]
        objective = totals.pop("objective")
        metrics = {f"{stage}/{name}": total / count for name, total in totals.items()}
        if stage == "train":
            metrics["train/objective"] = objective / count
            if self.hparams.kl_warmup_epochs:
                metrics["train/kl_weight"] = self.current_kl_weight()  # at the epoch's end
        # Every process holds the same sums now; sync_dist only keeps Lightning from warning.
        self.log_dict(metrics, sync_dist=True)
        loss = (totals["recon"] + totals["kl"]) / count
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True)
        bits = math.prod(self.hparams.image_shape) * math.log(2)  # nats per image -> bits/dim
        self.log(f"{stage}/bpd", loss / bits, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        return self.build_optimizers(self._trainer)  # None outside a fit

    def build_optimizers(self, trainer: L.Trainer | None = None) -> Optimizer | dict[str, Any]:
        """The optimizer, and its scheduler in Lightning's form if one is configured; a
        UserError names a bad setting. A scheduler that takes `total_steps` spreads over the
        trainer's optimizer steps (without a trainer, a stand-in: to check the settings)."""
        context = {"params": self.parameters(), "lr": self.hparams.lr}
        spec = dict(self.hparams.optimizer)
        if spec.get("fused") and self.device.type not in FUSED_DEVICES:
            spec["fused"] = None  # torch's default (foreach) where there is no fused kernel
        optimizer = build_part("optimizer", spec, context)
        check_optimizer(optimizer)  # e.g. a momentum torch takes but diverges with
        if not self.hparams.scheduler:
            return optimizer
        spec = dict(self.hparams.scheduler)
        interval = spec.pop("interval", "epoch")  # the module's key, not the scheduler's
        require(interval in ("epoch", "step"), "scheduler.interval", interval, "use epoch or step")
        cls = part_class("scheduler", spec)
        if issubclass(cls, ReduceLROnPlateau) and interval != "epoch":
            raise UserError(
                f"scheduler.interval={interval!r} is invalid for {cls.__name__}, which watches "
                "val/loss after each validation: use epoch"
            )
        takes = inspect.signature(cls).parameters
        if "total_steps" in takes and interval != "step":  # e.g. OneCycleLR
            raise UserError(
                f"scheduler.interval={interval!r} is invalid for {cls.__name__}, which spreads "
                "over the fit's optimizer steps: use step"
            )
        steps = self.fit_steps(trainer, cls.__name__) if "total_steps" in takes else None
        context = {"optimizer": optimizer, "total_steps": steps, "max_lr": self.hparams.lr}
        scheduler = build_part("scheduler", spec, context, SET_BY)
        check_scheduler(scheduler)  # settings torch takes but that fail or misbehave later
        # Stepped after each epoch or each optimizer step; one that reduces on a plateau
        # watches val/loss.
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval, "monitor": "val/loss"},
        }

    @staticmethod
    def fit_steps(trainer: L.Trainer | None, name: str) -> int:
        """The fit's optimizer steps (Lightning's estimate), or a stand-in without a trainer;
        a UserError if the fit has no known end. name: the scheduler's, for the message."""
        if trainer is None:
            return STAND_IN_STEPS
        total_steps = trainer.estimated_stepping_batches
        if not 1 <= total_steps < math.inf:  # inf: no limit; -1: an iterable of unknown length
            raise UserError(
                f"model.scheduler ({name}) spreads over the fit's optimizer steps, but "
                f"trainer.max_epochs={trainer.max_epochs} and trainer.max_steps="
                f"{trainer.max_steps} give no count of them: set trainer.max_steps, or "
                "trainer.max_epochs with data of a known length"
            )
        return int(total_steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A resumed run then logs the same means for its first epoch as an uninterrupted one.
        checkpoint["epoch_sums"] = self.epoch_sums.state_dict("train")
        # The DataModule's class, which scripts rebuild it from (vaelab.checkpoints) with the
        # datamodule_hyper_parameters that Lightning saves beside it.
        if (datamodule := self.trainer.datamodule) is not None:
            cls = type(datamodule)
            checkpoint["datamodule_target"] = f"{cls.__module__}.{cls.__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The settings the checkpoint trained with, for `on_train_start` to replace.
        self.resumed_hparams = dict(checkpoint.get("hyper_parameters", {}))
        self.resumed_sums = checkpoint.get("epoch_sums")

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path:  # a resumed run: after Lightning restored its optimizer
            self.follow_config_schedule()
            if self.resumed_sums is not None:  # the unfinished epoch's, on the training device
                self.epoch_sums.load_state_dict("train", self.resumed_sums, self.device)
        self.resumed_sums = None

    def follow_config_schedule(self) -> None:
        """Give a resumed run the optimizer's settings, learning rate and schedule that the
        config gives at this epoch (or optimizer step, for a schedule stepped per step), as if
        the run had started with it (so a cosine schedule over more epochs goes on along the
        longer curve); the optimizer's state, e.g. Adam's moments, stays the checkpoint's. A
        plateau schedule keeps the reductions it has made, relative to model.lr."""
        epoch = self.trainer.current_epoch  # the epochs done, after which the schedule stepped
        configured = self.configure_optimizers()
        optimizer, scheduler = (
            (configured["optimizer"], configured["lr_scheduler"]["scheduler"])
            if isinstance(configured, dict)
            else (configured, None)
        )
        per_step = isinstance(configured, dict) and configured["lr_scheduler"]["interval"] == "step"
        # the steps it has taken: one per optimizer step (global_step), or per epoch done
        steps = min(self.global_step, getattr(scheduler, "total_steps", math.inf))
        done = steps if per_step else epoch
        resumed = self.trainer.optimizers[0]
        saved = getattr(self, "resumed_hparams", {})
        if isinstance(scheduler, ReduceLROnPlateau):
            restored = self.trainer.lr_scheduler_configs[0].scheduler.state_dict()
            if (saved.get("scheduler") or {}).get("_target_") == self.hparams.scheduler["_target_"]:
                state = scheduler.state_dict()
                kept = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")
                scheduler.load_state_dict({**state, **{key: restored[key] for key in kept}})
                for group, old in zip(optimizer.param_groups, resumed.param_groups, strict=True):
                    same_lr = saved.get("lr") == self.hparams.lr
                    group["lr"] = old["lr"] if same_lr else old["lr"] / saved["lr"] * group["lr"]
        elif scheduler is not None:
            with warnings.catch_warnings():  # torch warns of a step before optimizer.step()
                warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step"))
                for _ in range(done):
                    scheduler.step()
        changes = []
        for group, new in zip(resumed.param_groups, optimizer.param_groups, strict=True):
            for key, value in new.items():
                if key not in ("params", "initial_lr") and plain(group.get(key)) != plain(value):
                    changes.append(f"{key} {group.get(key)!r} -> {value!r}")
            group.update({key: value for key, value in new.items() if key != "params"})
        if scheduler is not None:
            self.trainer.lr_scheduler_configs[0].scheduler.load_state_dict(scheduler.state_dict())
        if changes:
            at = f"step {self.global_step}" if per_step else f"epoch {epoch}"
            rank_zero_info(f"resume: from {at}, as the config says: {', '.join(changes)}")

    def loss_terms(
        self, x: Tensor, labels: Tensor | None = None, iw_samples: int = 1, weight: float = 1.0
    ) -> Terms:
        """The objective's terms per example: with one draw of q(z|x) the negative ELBO
        recon + weight * KL; with K = iw_samples > 1 the negative bound -L_K, its log p(z) -
        log q(z|x) scaled by `weight` (recon and KL then averaged over the K draws)."""
        c = self._condition(labels, len(x))
        mean, logvar = self.encoder(x, c)  # (B, latent) each
        if iw_samples == 1:  # 2-D tensors: a small network runs slower on (1, B, ...) shapes
            z = reparameterize(mean, logvar)
            recon, kl = self.likelihood.nll(self.decoder(z, c), x), self.prior.kl(mean, logvar, z)
            return Terms(recon, kl, recon + weight * kl)
        z = reparameterize(mean.expand(iw_samples, *mean.shape), logvar.expand(iw_samples, -1, -1))
        log_px_z, log_w = self._log_weights(x, c, z, mean, logvar, weight)  # (K, B) each
        recon, kl = -log_px_z.mean(0), self.prior.kl(mean, logvar, z)
        return Terms(recon, kl, -iw_log_likelihood(log_w))

    def _log_weights(
        self, x: Tensor, c: Tensor | None, z: Tensor, mean: Tensor, logvar: Tensor, weight: float
    ) -> tuple[Tensor, Tensor]:
        """log p(x|z) and the log importance weights of K draws z (K, B, latent): 2 x (K, B)."""
        log_px_z = -self.likelihood.nll(self.decoder(z, c), x)
        log_qz = gaussian_log_prob(z, mean, logvar)
        return log_px_z, log_importance_weights(log_px_z, self.prior.log_prob(z), log_qz, weight)

    def current_kl_weight(self) -> float:
        """The KL weight of the current optimizer step: beta, after the warm-up's linear rise."""
        if not self.hparams.kl_warmup_epochs:  # no Trainer needed
            return self.hparams.beta
        # global_step counts optimizer steps: one per trainer.accumulate_grad_batches batches,
        # and one more at an epoch's end for the batches left over.
        trainer = self.trainer
        steps_per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        epochs_done = self.global_step / steps_per_epoch
        return kl_weight(self.hparams.beta, self.hparams.kl_warmup_epochs, epochs_done)

    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x): (B, C, H, W) -> 2 x (B, latent)."""
        return self.encoder(x, self._condition(labels, len(x)))

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Pixel means of p(x|z): (B, latent) -> (B, C, H, W)."""
        logits = self.decoder(z, self._condition(labels, len(z)))  # (B, C * H * W)
        return self.likelihood.mean(logits).view(-1, *self.hparams.image_shape)

    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Decode the mean of q(z|x): a deterministic reconstruction."""
        return self.decode(self.encode(x, labels)[0], labels)

    def sample(
        self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Decode n draws from the prior; a conditional model needs n labels (n,)."""
        z = self.prior.sample(n, generator)  # a prior of one's own may draw on the generator's
        return self.decode(z.to(self.device), labels)  # device: a CPU one for a GPU model

    @torch.no_grad()
    def log_likelihood(
        self,
        x: Tensor,
        iw_samples: int,
        chunk_size: int = 100,
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """The importance-weighted estimate of log p(x) from K draws of q(z|x), decoded
        chunk_size at a time: (B, ...) -> (B,) nats. Each draw's noise is its own (B, latent)
        tensor from `generator` (a CPU one serves a GPU model too), so chunk_size does not
        change the result (for a likelihood that draws too, e.g. the dequantized Gaussian,
        it changes only that likelihood's draws, not their distribution). A conditional model
        estimates log p(x|label)."""
        require(iw_samples >= 1, "iw_samples", iw_samples, "use a positive number, e.g. 1000")
        require(chunk_size >= 1, "chunk_size", chunk_size, "use a positive integer, e.g. 100")
        c = self._condition(labels, len(x))
        mean, logvar = self.encoder(x, c)  # (B, latent) each
        device = mean.device if generator is None else generator.device

        def log_weights() -> Iterator[Tensor]:
            for start in range(0, iw_samples, chunk_size):
                n = min(chunk_size, iw_samples - start)
                noise = torch.stack(
                    [torch.randn(mean.shape, generator=generator, device=device) for _ in range(n)]
                )  # (n, B, latent)
                z = mean + torch.exp(0.5 * logvar) * noise.to(mean)
                if getattr(self.likelihood, "random", False):
                    # A likelihood that draws (the Gaussian's dequantization) draws from
                    # torch's global generator, seeded from `generator` here, then restored.
                    seed = int(torch.randint(2**31, (1,), generator=generator, device=device))
                    cuda = [mean.device] if mean.device.type == "cuda" else []
                    with torch.random.fork_rng(cuda):
                        torch.manual_seed(seed)
                        log_w = self._log_weights(x, c, z, mean, logvar, 1.0)[1]
                else:
                    log_w = self._log_weights(x, c, z, mean, logvar, 1.0)[1]
                yield log_w  # (n, B)

        return iw_log_likelihood(log_weights())

    def _condition(self, labels: Tensor | None, n: int) -> Tensor | None:
        """The one-hot labels a conditional model is given, (n,) -> (n, num_classes)."""
        if not self.hparams.conditional:
            if labels is not None:
                raise UserError("labels were given, but this model is not conditional: omit them")
            return None
        if labels is None or labels.shape != (n,):
            got = "none" if labels is None else f"shape {tuple(labels.shape)}"
            raise UserError(f"this conditional model needs labels=... of shape ({n},), got {got}")
        return F.one_hot(labels.to(self.device), self.hparams.num_classes).to(self.dtype)


def plain(value: Any) -> Any:
    """A tuple as a list, so that settings compare equal however they were given."""
    return list(value) if isinstance(value, tuple) else value
