"""The loss terms against torch.distributions and against the chapter's formula."""

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal, kl_divergence

from vaelab.losses import bernoulli_nll, gaussian_kl


def test_gaussian_kl_equals_torch_distributions() -> None:
    torch.manual_seed(0)
    mean, logvar = torch.randn(5, 3), torch.randn(5, 3)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    assert gaussian_kl(mean, logvar).shape == (5,)
    torch.testing.assert_close(gaussian_kl(mean, logvar), expected)


def test_gaussian_kl_is_zero_only_at_the_prior() -> None:
    zeros = torch.zeros(2, 4)
    torch.testing.assert_close(gaussian_kl(zeros, zeros), torch.zeros(2))
    assert (gaussian_kl(zeros + 0.1, zeros) > 0).all()


def test_bernoulli_nll_equals_torch_distributions() -> None:
    """Intensities in [0, 1] as targets, as in the chapter: outside the Bernoulli's support."""
    torch.manual_seed(0)
    logits, x = torch.randn(4, 784) * 3, torch.rand(4, 1, 28, 28)
    expected = -Bernoulli(logits=logits, validate_args=False).log_prob(x.view(4, 784)).sum(-1)
    torch.testing.assert_close(bernoulli_nll(logits, x), expected)


def test_loss_equals_the_chapters_formula() -> None:
    """BCE on sigmoid outputs, summed over the batch, plus the KL: the chapter's loss."""
    torch.manual_seed(0)
    logits, x = torch.randn(8, 784), torch.rand(8, 1, 28, 28)
    mu, logstd = torch.randn(8, 20), torch.randn(8, 20)  # the chapter's names; logstd is a logvar
    bce = F.binary_cross_entropy(torch.sigmoid(logits), x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logstd - mu.pow(2) - logstd.exp())
    ours = (bernoulli_nll(logits, x) + gaussian_kl(mu, logstd)).sum()
    torch.testing.assert_close(ours, bce + kld)


def test_bernoulli_nll_is_finite_for_extreme_logits() -> None:
    """From logits there is no log(0): sigmoid then BCE would give inf here."""
    logits = torch.tensor([[-200.0, 200.0]])
    x = torch.tensor([[1.0, 0.0]])
    assert torch.isfinite(bernoulli_nll(logits, x)).all()
    torch.testing.assert_close(bernoulli_nll(logits, x), torch.tensor([400.0]))
