"""p(x|z) of the pixels given the decoder's logits: the negative log-likelihood and the mean."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import ContinuousBernoulli as TorchContinuousBernoulli

from vaelab.errors import require
from vaelab.losses import (
    bernoulli_nll,
    continuous_bernoulli_nll,
    discretized_logistic_log_prob,
    gaussian_nll,
)


class Bernoulli(nn.Module):
    """Independent Bernoulli pixels (the chapter's): binary cross-entropy from logits."""

    def nll(self, logits: Tensor, x: Tensor) -> Tensor:
        """-log p(x|z): logits (..., B, D) and x (B, ...) with D values each -> (..., B)."""
        return bernoulli_nll(logits, x)

    def mean(self, logits: Tensor) -> Tensor:
        """The pixels' expected values, sigmoid(logits)."""
        return torch.sigmoid(logits)


class ContinuousBernoulli(nn.Module):
    """Independent continuous Bernoulli pixels (Loaiza-Ganem & Cunningham 2019), a density on
    [0, 1]; its log-likelihoods can be positive."""

    def nll(self, logits: Tensor, x: Tensor) -> Tensor:
        """-log p(x|z), shapes as `Bernoulli.nll`."""
        return continuous_bernoulli_nll(logits, x)

    def mean(self, logits: Tensor) -> Tensor:
        """The distribution's mean, which is not sigmoid(logits), its parameter."""
        return TorchContinuousBernoulli(logits=logits.float()).mean


class Gaussian(nn.Module):
    """Independent Gaussian pixels N(sigmoid(logit), sigma^2) for 8-bit images in [0, 1].

    `variance`: "fixed" (sigma as given), "learned" (one sigma per pixel, a parameter), or
    "optimal", after the sigma-VAE (Rybkin et al. 2021): the maximum-likelihood sigma of each
    image's reconstruction, the root of its mean squared error (per image rather than per
    batch, so that a figure depends neither on the batch nor on the draws beside it). With
    `dequantize` (for 8-bit data, values k / 255), each pixel is spread uniformly over its
    bin of width 1/256, y = (255 x + u) / 256 with u ~ U(0, 1), and D log 256 is added:
    -log p(y) + D log 256 bounds -log P(x) of the discrete pixels from above, in nats that
    compare with a discrete likelihood's (Theis et al. 2016). log sigma is kept above -6.
    """

    VARIANCES = ("fixed", "learned", "optimal")

    def __init__(
        self,
        image_shape: Sequence[int],
        variance: str = "learned",
        sigma: float = 0.1,
        dequantize: bool = True,
    ) -> None:
        super().__init__()
        self.random = dequantize  # its nll draws: VAEModule.log_likelihood seeds it
        require(variance in self.VARIANCES, "variance", variance, "use fixed, learned or optimal")
        require(sigma > 0, "sigma", sigma, "use a positive standard deviation, e.g. 0.1")
        self.variance, self.dequantize = variance, dequantize
        start = torch.full((math.prod(image_shape),), math.log(sigma))
        if variance == "learned":
            self.log_sigma = nn.Parameter(start)
        else:
            self.register_buffer("log_sigma", start)

    def nll(self, logits: Tensor, x: Tensor) -> Tensor:
        """-log p(x|z) (a bound on it with `dequantize`), shapes as `Bernoulli.nll`."""
        mean = torch.sigmoid(logits.float())
        y = x.flatten(1).float()
        if self.dequantize:
            y = (y * 255 + torch.rand_like(y)) / 256
        log_sigma = self.log_sigma
        if self.variance == "optimal":
            log_sigma = 0.5 * torch.log((y - mean).pow(2).mean(-1, keepdim=True))
        nll = gaussian_nll(mean, log_sigma.clamp(min=-6.0), y)
        return nll + mean.shape[-1] * math.log(256) if self.dequantize else nll

    def mean(self, logits: Tensor) -> Tensor:
        """The pixels' expected values, sigmoid(logits)."""
        return torch.sigmoid(logits)


class DiscretizedLogistic(nn.Module):
    """A mixture of `num_mixtures` discretized logistics per pixel value for 8-bit images
    (Salimans et al. 2017), as in IAF-VAE, NVAE and VDVAE. Unlike PixelCNN++, whose RGB means
    depend on the channels before, each channel is its own mixture given z: the decoder
    models the channels jointly, the likelihood not. Takes 3 k decoder outputs per value:
    mixture logits, means, log scales (kept above -7)."""

    def __init__(self, num_mixtures: int = 5) -> None:
        super().__init__()
        ok = isinstance(num_mixtures, int) and num_mixtures >= 1
        require(ok, "num_mixtures", num_mixtures, "use a positive integer, e.g. 5")
        self.num_mixtures = num_mixtures
        self.outputs_per_value = 3 * num_mixtures

    def split(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The decoder's (..., 3 k D) outputs, k blocks of D each, as three (..., D, k)."""
        k = self.num_mixtures
        params = logits.float().unflatten(-1, (3 * k, -1)).movedim(-2, -1)  # (..., D, 3k)
        weights, means, log_scales = params.split(k, dim=-1)
        return weights, means, log_scales.clamp(min=-7.0)

    def nll(self, logits: Tensor, x: Tensor) -> Tensor:
        """-log P(x|z) of the 8-bit pixels: logits (..., B, 3 k D), x (B, ...) -> (..., B)."""
        return -discretized_logistic_log_prob(*self.split(logits), x).sum(-1)

    def mean(self, logits: Tensor) -> Tensor:
        """The pixels' expected values in [0, 1] (the mixture's mean, clamped): (..., D)."""
        weights, means, _ = self.split(logits)
        mean = (torch.softmax(weights, dim=-1) * means).sum(-1)
        return ((mean + 1) / 2).clamp(0, 1)
