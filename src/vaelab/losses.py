"""The VAE objective as small pure functions; each returns one value per example, in nats."""

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


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


def gaussian_log_prob(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mean, diag(exp(logvar))), the density of q(z|x) at z.

    Summed over latent dimensions; broadcasts, e.g. z (K, B, latent) with mean (B, latent)
    -> (K, B).
    """
    return -0.5 * torch.sum(LOG_2PI + logvar + (z - mean).pow(2) * torch.exp(-logvar), dim=-1)


def log_normal_standard(z: Tensor) -> Tensor:
    """log N(z; 0, I), the density of the prior p(z): (..., latent) -> (...)."""
    return -0.5 * torch.sum(LOG_2PI + z.pow(2), dim=-1)


def log_importance_weights(
    logits: Tensor, x: Tensor, z: Tensor, mean: Tensor, logvar: Tensor
) -> Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x) for K draws z of q(z|x) (Burda et al. 2015).

    logits (K, B, 784) decode z (K, B, latent); x (B, ...); mean and logvar (B, latent)
    -> (K, B). With K = 1, -log w is the single-sample negative ELBO, recon + log q - log p.
    """
    k, b = z.shape[:2]
    targets = x.expand(k, *x.shape).flatten(0, 1)  # (B, ...) -> (K, B, ...) -> (K*B, ...)
    log_px_z = -bernoulli_nll(logits.flatten(0, 1), targets).view(k, b)  # (K*B,) -> (K, B)
    return log_px_z + log_normal_standard(z) - gaussian_log_prob(z, mean, logvar)


def iw_log_likelihood(log_weights: Tensor | Iterable[Tensor]) -> Tensor:
    """log (1/K) sum_k w_k, the importance-weighted estimate of log p(x) (Burda et al. 2015).

    The k-sample bound L_k of their Sec. 3: a lower bound in expectation that tightens as K
    grows; K = 1 gives the ELBO. Takes the log-weights as one (K, B) tensor or as chunks
    (K_i, B) with K = sum K_i: a running logsumexp keeps one value per example between
    chunks. -> (B,).
    """
    chunks = [log_weights] if isinstance(log_weights, Tensor) else log_weights
    total, count = None, 0
    for chunk in chunks:
        partial = torch.logsumexp(chunk, dim=0)  # (K_i, B) -> (B,)
        total = partial if total is None else torch.logaddexp(total, partial)
        count += len(chunk)
    return total - math.log(count)
