"""The VAE objective as small pure functions; each returns one value per example, in nats."""

import math
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


class Terms(NamedTuple):
    """Per example (B,): -log p(x|z), KL(q(z|x) || p(z)), and the objective minimized."""

    recon: Tensor
    kl: Tensor
    objective: Tensor


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) in closed form (Kingma & Welling 2014, App. B).

    Summed over latent dimensions: (B, latent) -> (B,).
    """
    return -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp(), dim=-1)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x|z) for independent Bernoulli pixels given their logits.

    Binary cross-entropy from logits (stable, autocast-safe), summed over pixels:
    logits (..., B, D) and x (B, ...) with D values per example -> (..., B), e.g. K draws
    of z decoded at once.
    """
    target = x.flatten(1).expand_as(logits)  # (B, C, H, W) -> (B, D) -> (..., B, D), D = C*H*W
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)


def continuous_bernoulli_log_norm(logits: Tensor) -> Tensor:
    """log C(lambda), the continuous Bernoulli's log normalizer, per pixel, from its logit eta.

    C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) (Loaiza-Ganem & Cunningham 2019,
    Eq. 7); with lambda = sigmoid(eta) it is eta / tanh(eta / 2), even in eta. Near eta = 0,
    where that is 0 / 0, its Taylor series log 2 + eta^2 / 12 is used instead.
    """
    # At least float32, even under autocast: tanh and log lose too many bits in bf16.
    eta = logits.to(torch.promote_types(logits.dtype, torch.float32)).abs()
    small = eta < 1e-2  # there the next term, -7 eta^4 / 1440, is below float32's precision
    safe = torch.where(small, torch.ones_like(eta), eta)
    exact = torch.log(safe) - torch.log(torch.tanh(safe / 2))
    return torch.where(small, math.log(2) + eta.pow(2) / 12, exact)


def continuous_bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x|z) for independent continuous Bernoulli pixels, a density on [0, 1].

    The Bernoulli's cross-entropy minus each pixel's log normalizer; shapes as
    `bernoulli_nll`. It can be negative: a density may exceed 1.
    """
    return bernoulli_nll(logits, x) - continuous_bernoulli_log_norm(logits).sum(-1)


def kl_weight(beta: float, warmup_epochs: int, epochs_done: float) -> float:
    """The weight of the KL term: rising linearly from 0 to beta over the first warmup_epochs
    (Bowman et al. 2016), then beta. epochs_done counts fractions: 2.5 is mid third epoch."""
    if warmup_epochs == 0:
        return beta
    return beta * min(1.0, epochs_done / warmup_epochs)


def gaussian_nll(mean: Tensor, log_sigma: Tensor, x: Tensor) -> Tensor:
    """-log N(x; mean, sigma^2) of independent pixels, summed over them: mean (..., B, D),
    log_sigma broadcasting to it, x (B, ...) with D values per example -> (..., B)."""
    target = x.flatten(1).expand_as(mean)
    z = (target - mean) * torch.exp(-log_sigma)
    return (0.5 * (LOG_2PI + z.pow(2)) + log_sigma).expand_as(mean).sum(-1)


def discretized_logistic_log_prob(
    weights: Tensor, means: Tensor, log_scales: Tensor, x: Tensor
) -> Tensor:
    """log P(x) per pixel value under a mixture of logistics discretized to 256 bins
    (Salimans et al. 2017, PixelCNN++): mixture logits, means and log scales (..., B, D, k),
    on values scaled to [-1, 1], x (B, ...) of 8-bit values k / 255 in [0, 1] -> (..., B, D).
    Bin j covers [v - 1/255, v + 1/255] for its value v, the end bins reach out to -inf and
    +inf, so the 256 probabilities sum to 1."""
    v = (2 * x.flatten(1) - 1).unsqueeze(-1)  # (B, D, 1) in [-1, 1]
    centred, inv_scale = v - means, torch.exp(-log_scales)
    upper, lower = inv_scale * (centred + 1 / 255), inv_scale * (centred - 1 / 255)
    log_cdf_upper = upper - F.softplus(upper)  # log sigmoid(upper): the first bin
    log_survival_lower = -F.softplus(lower)  # log (1 - sigmoid(lower)): the last bin
    mass = torch.sigmoid(upper) - torch.sigmoid(lower)
    # Where the bin's mass underflows, its density at the centre times the bin's width.
    middle = inv_scale * centred
    log_density = middle - log_scales - 2 * F.softplus(middle) + math.log(2 / 255)
    inner = torch.where(mass > 1e-5, torch.log(mass.clamp(min=1e-12)), log_density)
    log_p = torch.where(
        v < -0.999, log_cdf_upper, torch.where(v > 0.999, log_survival_lower, inner)
    )
    return torch.logsumexp(log_p + F.log_softmax(weights, dim=-1), dim=-1)


def gaussian_log_prob(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mean, diag(exp(logvar))), the density of q(z|x) at z.

    Summed over latent dimensions; broadcasts, e.g. z (K, B, latent) with mean (B, latent)
    -> (K, B).
    """
    return -0.5 * torch.sum(LOG_2PI + logvar + (z - mean).pow(2) * torch.exp(-logvar), dim=-1)


def log_normal_standard(z: Tensor) -> Tensor:
    """log N(z; 0, I), the density of the prior p(z): (..., latent) -> (...)."""
    return -0.5 * torch.sum(LOG_2PI + z.pow(2), dim=-1)


def gaussian_mixture_log_prob(
    z: Tensor, means: Tensor, logvars: Tensor, log_weights: Tensor
) -> Tensor:
    """log sum_k w_k N(z; means_k, diag(exp(logvars_k))), a mixture of diagonal Gaussians.

    Summed over latent dimensions: z (..., latent), means and logvars (K, latent), log_weights
    (K,) normalized -> (...). The squares are expanded into matrix products, so memory holds
    one value per draw and component rather than per latent dimension too: z (100, 100, 20)
    against 500 components would otherwise take 400 MB.
    """
    inv_var = torch.exp(-logvars)  # (K, latent)
    flat = z.reshape(-1, z.shape[-1])  # (..., latent) -> (N, latent)
    # sum_d (z_d - m_kd)^2 / v_kd = z^2 . 1/v_k - 2 z . m_k/v_k + m_k^2 . 1/v_k: (N, K)
    squares = flat.pow(2) @ inv_var.T - 2 * flat @ (means * inv_var).T
    squares = squares + (means.pow(2) * inv_var).sum(-1)
    log_components = -0.5 * (z.shape[-1] * LOG_2PI + logvars.sum(-1) + squares)  # (N, K)
    return torch.logsumexp(log_components + log_weights, dim=-1).reshape(z.shape[:-1])


def log_importance_weights(
    log_px_z: Tensor, log_pz: Tensor, log_qz: Tensor, weight: float = 1.0
) -> Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x) for K draws z of q(z|x) (Burda et al. 2015).

    Each (K, B) -> (K, B). With K = 1, -log w is the single-sample negative ELBO,
    recon + log q - log p. `weight` scales log p(z) - log q(z|x) as beta scales the ELBO's KL;
    1 gives the true weights.
    """
    return log_px_z + weight * (log_pz - log_qz)


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
