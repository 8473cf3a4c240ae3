"""p(x|z) of the pixels given the decoder's logits: the negative log-likelihood and the mean."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import ContinuousBernoulli as TorchContinuousBernoulli

from vaelab.errors import require
from vaelab.losses import bernoulli_nll, continuous_bernoulli_nll, gaussian_nll


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
    "optimal", the sigma-VAE's (Rybkin et al. 2021): the maximum-likelihood sigma of the
    batch, sqrt of its mean squared error, so a figure depends on the batch it was in. With
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
            log_sigma = 0.5 * torch.log((y - mean).pow(2).mean())
        nll = gaussian_nll(mean, log_sigma.clamp(min=-6.0), y)
        return nll + mean.shape[-1] * math.log(256) if self.dequantize else nll

    def mean(self, logits: Tensor) -> Tensor:
        """The pixels' expected values, sigmoid(logits)."""
        return torch.sigmoid(logits)
