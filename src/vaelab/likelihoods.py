"""p(x|z) of the pixels given the decoder's logits: the negative log-likelihood and the mean."""

import torch
from torch import Tensor, nn
from torch.distributions import ContinuousBernoulli as TorchContinuousBernoulli

from vaelab.losses import bernoulli_nll, continuous_bernoulli_nll


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
