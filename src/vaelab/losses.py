"""The VAE objective as small pure functions; each returns one value per example, in nats."""

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) in closed form (Kingma & Welling 2014, App. B).

    Summed over latent dimensions: (B, latent) -> (B,).
    """
    return -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp(), dim=-1)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x|z) for independent Bernoulli pixels given their logits.

    Binary cross-entropy from logits (stable, autocast-safe), summed over pixels:
    logits (B, 784) and x (B, ...) with 784 values per example -> (B,).
    """
    target = x.flatten(1)  # (B, 1, 28, 28) -> (B, 784)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
