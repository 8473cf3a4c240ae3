"""Priors p(z): the standard normal, a learned mixture of Gaussians, and the VampPrior.

Each takes `log_prob(z)`, `sample(n)` and `kl(mean, logvar, z)`; the VAE builds it from the
latent size (and, for the VampPrior, its encoder and the image's shape) and its config's keys.
"""

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.errors import require
from vaelab.losses import (
    gaussian_kl,
    gaussian_log_prob,
    gaussian_mixture_log_prob,
    log_normal_standard,
)


class Prior(nn.Module):
    """p(z): subclasses give `log_prob` and `sample`; `kl` estimates KL(q(z|x) || p(z))."""

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z), summed over latent dimensions: (..., latent) -> (...)."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws: -> (n, latent), on the prior's device."""
        raise NotImplementedError

    def kl(self, mean: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
        """KL(q(z|x) || p(z)) per example: (B, latent) each, z (..., B, latent) -> (B,).

        Here the single-sample estimate log q(z|x) - log p(z) at the draws z of q(z|x),
        averaged over leading draws (Tomczak & Welling 2018, Eq. 5); priors with a closed form
        override it.
        """
        estimate = gaussian_log_prob(z, mean, logvar) - self.log_prob(z)  # (..., B)
        return estimate.reshape(-1, estimate.shape[-1]).mean(0)


class StandardNormal(Prior):
    """N(0, I), the prior of Kingma & Welling (2014)."""

    def __init__(self, latent_size: int) -> None:
        super().__init__()
        self.latent_size = latent_size
        self.register_buffer("anchor", torch.zeros(0), persistent=False)  # device and dtype

    def log_prob(self, z: Tensor) -> Tensor:
        return log_normal_standard(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return draw_normal((n, self.latent_size), generator, self.anchor)

    def kl(self, mean: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
        """In closed form (Kingma & Welling 2014, App. B); z is not needed."""
        return gaussian_kl(mean, logvar)


class MixturePrior(Prior):
    """A mixture of diagonal Gaussians whose components `components()` gives."""

    def components(self) -> tuple[Tensor, Tensor, Tensor]:
        """Means and log-variances (K, latent) and normalized log-weights (K,)."""
        raise NotImplementedError

    def log_prob(self, z: Tensor) -> Tensor:
        return gaussian_mixture_log_prob(z, *self.components())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        means, logvars, log_weights = self.components()
        device = log_weights.device if generator is None else generator.device
        k = torch.multinomial(
            log_weights.exp().to(device), n, replacement=True, generator=generator
        )
        k = k.to(means.device)  # (n,): the component of each draw
        return means[k] + torch.exp(0.5 * logvars[k]) * draw_normal(
            means[k].shape, generator, means
        )


class GaussianMixture(MixturePrior):
    """A mixture of K diagonal Gaussians whose weights, means and variances are learned."""

    def __init__(self, latent_size: int, num_components: int = 500) -> None:
        super().__init__()
        require(num_components >= 1, "num_components", num_components, "use 1 or more, e.g. 500")
        self.means = nn.Parameter(torch.randn(num_components, latent_size))
        self.logvars = nn.Parameter(torch.zeros(num_components, latent_size))
        self.logits = nn.Parameter(torch.zeros(num_components))  # equal weights to begin with

    def components(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.means, self.logvars, F.log_softmax(self.logits, dim=0)


class VampPrior(MixturePrior):
    """The VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z|u_k) over K learned
    pseudo-inputs u_k, encoded by the VAE's own encoder.

    The pseudo-inputs are kept in [0, 1] by a hard tanh and start near 0.05, just inside it,
    where the hard tanh passes gradients. A conditional VAE's encoder is given an all-zero
    condition for them, so that p(z), as with the other priors, does not depend on the label.
    """

    def __init__(
        self,
        latent_size: int,
        image_shape: Sequence[int],
        encoder: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]],
        condition_size: int = 0,
        num_components: int = 500,
    ) -> None:
        super().__init__()
        require(num_components >= 1, "num_components", num_components, "use 1 or more, e.g. 500")
        self.pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(num_components, *image_shape))
        self.register_buffer(
            "condition",
            torch.zeros(num_components, condition_size) if condition_size else None,
            persistent=False,
        )
        # Not registered as a submodule: the VAE owns the encoder, and its weights would
        # otherwise be saved twice in every checkpoint.
        object.__setattr__(self, "encoder", encoder)

    def components(self) -> tuple[Tensor, Tensor, Tensor]:
        u = F.hardtanh(self.pseudo_inputs, 0.0, 1.0)  # (K, C, H, W)
        means, logvars = self.encoder(u, self.condition)  # (K, latent) each
        log_weights = means.new_full((len(u),), -math.log(len(u)))  # uniform: (K,)
        return means, logvars, log_weights


def draw_normal(shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Standard normal noise of `shape`, drawn on the generator's device, moved to `like`'s."""
    device = like.device if generator is None else generator.device
    return torch.randn(shape, generator=generator, device=device).to(like)
