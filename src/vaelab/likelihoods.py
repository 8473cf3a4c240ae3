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
    (Salimans et al. 2017), as in IAF-VAE, NVAE and VDVAE. Takes 3 k decoder outputs per
    value: mixture logits, means, log scales (kept above -7).

    With `coupled_channels` (images of 2 or 3 channels), as in PixelCNN++, a pixel's green
    mean moves with its red value and its blue mean with its red and green values, by
    coefficients in [-1, 1] that the decoder gives too (a 4th k outputs per value: the
    pixel's three values' slots hold the green-on-red, blue-on-red and blue-on-green ones);
    then p(x|z) = p(r|z) p(g|r, z) p(b|r, g, z), each a mixture of its own (PixelCNN++ and
    VDVAE draw one component for a pixel's three values; here each value has its own
    weights). Without it each channel is independent given z: the decoder models the
    channels jointly, the likelihood not.
    """

    def __init__(
        self,
        num_mixtures: int = 5,
        coupled_channels: bool = False,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        """image_shape: (C, H, W), given by the VAE; needed with coupled_channels."""
        super().__init__()
        ok = isinstance(num_mixtures, int) and num_mixtures >= 1
        require(ok, "num_mixtures", num_mixtures, "use a positive integer, e.g. 5")
        channels = image_shape[0] if image_shape is not None else 1
        fits = not coupled_channels or (image_shape is not None and channels <= 3)
        why = f"images of {channels} channels; it couples 2 or 3 (RGB): use false"
        require(fits, "coupled_channels", coupled_channels, why)
        self.num_mixtures = num_mixtures
        self.coupled = bool(coupled_channels) and channels > 1  # one channel: nothing to couple
        self.channels = channels
        self.outputs_per_value = (4 if self.coupled else 3) * num_mixtures

    def split(self, logits: Tensor) -> tuple[Tensor, ...]:
        """The decoder's (..., n k D) outputs, n blocks of k blocks of D each, as n (..., D, k):
        mixture logits, means, log scales (and with coupling, tanh of the coefficients)."""
        k = self.num_mixtures
        params = logits.float().unflatten(-1, (self.outputs_per_value, -1)).movedim(-2, -1)
        weights, means, log_scales, *coefficients = params.split(k, dim=-1)  # (..., D, k) each
        return weights, means, log_scales.clamp(min=-7.0), *map(torch.tanh, coefficients)

    def _coupled(self, means: Tensor, coefficients: Tensor, x: Tensor) -> Tensor:
        """The means (..., D, k) with green moved by c_rg red and blue by c_rb red + c_gb green,
        given the values x (B, C, H, W) or (B, D), scaled to [-1, 1] as the means are."""
        C = self.channels
        v = (2 * x.reshape(len(x), C, -1) - 1).unsqueeze(-1)  # (B, C, H*W, 1)
        m = means.unflatten(-2, (C, -1))  # (..., B, C, H*W, k)
        c = coefficients.unflatten(-2, (C, -1))  # slots 0, 1, 2: rg, rb, gb
        moved = [m[..., 0, :, :], m[..., 1, :, :] + c[..., 0, :, :] * v[:, 0]]
        if C == 3:
            moved.append(m[..., 2, :, :] + c[..., 1, :, :] * v[:, 0] + c[..., 2, :, :] * v[:, 1])
        return torch.stack(moved, dim=-3).flatten(-3, -2)  # (..., B, D, k)

    def nll(self, logits: Tensor, x: Tensor) -> Tensor:
        """-log P(x|z) of the 8-bit pixels: logits (..., B, n k D), x (B, ...) -> (..., B)."""
        weights, means, log_scales, *coefficients = self.split(logits)
        if self.coupled:
            means = self._coupled(means, coefficients[0], x)
        return -discretized_logistic_log_prob(weights, means, log_scales, x).sum(-1)

    def mean(self, logits: Tensor) -> Tensor:
        """The pixels' expected values in [0, 1] (the mixture's mean, clamped): (..., D). With
        coupling, a channel's mean follows from the means of the channels before it."""
        weights, means, _, *coefficients = self.split(logits)
        probabilities = torch.softmax(weights, dim=-1)
        if not self.coupled:
            return (((probabilities * means).sum(-1) + 1) / 2).clamp(0, 1)
        p, m = (
            probabilities.unflatten(-2, (self.channels, -1)),
            means.unflatten(-2, (self.channels, -1)),
        )
        c = coefficients[0].unflatten(-2, (self.channels, -1))  # (..., C, H*W, k)
        red = (p[..., 0, :, :] * m[..., 0, :, :]).sum(-1)  # in [-1, 1] (before the clamp)
        green = (p[..., 1, :, :] * (m[..., 1, :, :] + c[..., 0, :, :] * red.unsqueeze(-1))).sum(-1)
        expected = [red, green]
        if self.channels == 3:
            shift = c[..., 1, :, :] * red.unsqueeze(-1) + c[..., 2, :, :] * green.unsqueeze(-1)
            expected.append((p[..., 2, :, :] * (m[..., 2, :, :] + shift)).sum(-1))
        return ((torch.stack(expected, dim=-2).flatten(-2) + 1) / 2).clamp(0, 1)
