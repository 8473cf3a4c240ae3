"""The priors against torch.distributions; the model samples and scores with its own prior."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vaelab import UserError
from vaelab.losses import gaussian_kl, gaussian_mixture_log_prob
from vaelab.module import VAEModule
from vaelab.networks import MLPEncoder
from vaelab.priors import GaussianMixture, Prior, StandardNormal, VampPrior

MOG = {"_target_": "vaelab.priors.GaussianMixture", "num_components": 4}
VAMP = {"_target_": "vaelab.priors.VampPrior", "num_components": 4}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mixture(means: torch.Tensor, logvars: torch.Tensor, logits: torch.Tensor) -> MixtureSameFamily:
    """torch's mixture of diagonal Gaussians: the reference for ours."""
    components = Independent(Normal(means, (0.5 * logvars).exp()), 1)
    return MixtureSameFamily(Categorical(logits=logits), components)


def test_mixture_log_prob_equals_torch_distributions() -> None:
    """In float64 to the last digits, and in float32 within its rounding, though the squares
    are expanded into matrix products."""
    generator = seeded(0)
    means, logvars = torch.randn(7, 5, generator=generator), torch.randn(7, 5, generator=generator)
    logits = torch.randn(7, generator=generator)
    z = 2 * torch.randn(3, 11, 5, generator=generator)  # (draws, B, latent)
    expected = mixture(means.double(), logvars.double(), logits.double()).log_prob(z.double())
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-3)):
        log_weights = F.log_softmax(logits.to(dtype), 0)
        ours = gaussian_mixture_log_prob(*(t.to(dtype) for t in (z, means, logvars)), log_weights)
        assert ours.shape == expected.shape == (3, 11)
        torch.testing.assert_close(ours.double(), expected, atol=tolerance, rtol=0)


def test_standard_normal_log_prob_and_closed_form_kl() -> None:
    prior = StandardNormal(latent_size=4)
    z = torch.randn(6, 4, generator=seeded(1))
    expected = Independent(Normal(torch.zeros(4), torch.ones(4)), 1).log_prob(z)
    torch.testing.assert_close(prior.log_prob(z), expected)
    mean, logvar = torch.randn(6, 4, generator=seeded(2)), torch.randn(6, 4, generator=seeded(3))
    torch.testing.assert_close(prior.kl(mean, logvar, z), gaussian_kl(mean, logvar))


def test_the_single_sample_kl_estimate_averages_to_the_closed_form() -> None:
    """Prior.kl's estimate log q(z|x) - log p(z), which mixtures use, is unbiased: for the
    standard normal, its mean over many draws of q is the closed form."""
    prior = StandardNormal(latent_size=3)
    mean, logvar = torch.randn(5, 3, generator=seeded(4)), torch.randn(5, 3, generator=seeded(5))
    z = mean + (0.5 * logvar).exp() * torch.randn(100_000, 5, 3, generator=seeded(6))
    estimate = Prior.kl(prior, mean, logvar, z)  # the base class's estimate, (5,)
    one_draw = Prior.kl(prior, mean, logvar, z[0])  # (5,), far from the closed form
    closed = gaussian_kl(mean, logvar)
    torch.testing.assert_close(estimate, closed, atol=0.03, rtol=0)
    assert one_draw.shape == closed.shape == (5,) and not torch.allclose(
        one_draw, closed, atol=0.03
    )


def test_gaussian_mixture_log_prob_and_samples() -> None:
    torch.manual_seed(0)
    prior = GaussianMixture(latent_size=2, num_components=3)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]]))
        prior.logvars.copy_(torch.log(torch.tensor([[0.25], [1.0], [4.0]])).expand(3, 2))
        prior.logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    reference = mixture(prior.means, prior.logvars, prior.logits)
    z = torch.randn(50, 2, generator=seeded(1)) * 5
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z).detach())
    with torch.no_grad():
        draws = prior.sample(40_000, seeded(2))  # (n, latent)
    assert draws.shape == (40_000, 2)
    torch.testing.assert_close(draws.mean(0), reference.mean.detach(), atol=0.06, rtol=0)
    torch.testing.assert_close(draws.var(0), reference.variance.detach(), atol=0.4, rtol=0)
    with torch.no_grad():
        again = prior.sample(40_000, seeded(2))
    assert torch.equal(draws, again)  # repeatable from the generator


def test_vampprior_is_the_mixture_of_the_encoded_pseudo_inputs() -> None:
    torch.manual_seed(0)
    encoder = MLPEncoder((1, 6, 6), latent_size=3, hidden_sizes=[8])
    prior = VampPrior(3, (1, 6, 6), encoder, num_components=5)
    assert prior.pseudo_inputs.shape == (5, 1, 6, 6)
    assert "encoder" not in dict(prior.named_children())  # the VAE's; not saved twice
    with torch.no_grad():
        prior.pseudo_inputs[0] = 3.0  # kept in [0, 1] by the hard tanh
    means, logvars = encoder(prior.pseudo_inputs.clamp(0, 1))
    reference = mixture(means, logvars, torch.zeros(5))  # equal weights 1/K
    z = torch.randn(4, 9, 3, generator=seeded(1))
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z), atol=1e-4, rtol=0)
    log_weights = prior.components()[2]
    torch.testing.assert_close(log_weights, torch.full((5,), -math.log(5)))


@pytest.mark.parametrize("spec", [MOG, VAMP], ids=["mog", "vamp"])
def test_the_priors_parameters_receive_gradients(spec: dict) -> None:
    torch.manual_seed(0)
    model = VAEModule(latent_size=3, prior=spec)
    x = torch.rand(6, 1, 28, 28)
    model.loss_terms(x).objective.mean().backward()
    prior_parameters = dict(model.prior.named_parameters())
    assert set(prior_parameters) == (
        {"means", "logvars", "logits"} if spec is MOG else {"pseudo_inputs"}
    )
    for name, parameter in prior_parameters.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("spec", [MOG, VAMP], ids=["mog", "vamp"])
def test_the_model_samples_and_scores_with_its_prior(spec: dict) -> None:
    torch.manual_seed(0)
    model = VAEModule(latent_size=3, prior=spec).eval()
    with torch.no_grad():
        samples = model.sample(5, generator=seeded(1))
        torch.testing.assert_close(samples, model.decode(model.prior.sample(5, seeded(1))))
        # q(z|x) fixed at one component of a one-component mixture, and a decoder blind to
        # z: every importance weight is p(x), so the estimate is exact only with this prior
        x = torch.rand(4, 1, 28, 28, generator=seeded(2)).bernoulli(generator=seeded(3))
        means, logvars, _ = model.prior.components()
        model.decoder.body[0].weight.zero_()
        model.encoder.mean.weight.zero_()
        model.encoder.logvar.weight.zero_()
        if spec is MOG:
            model.prior.logits.copy_(torch.tensor([0.0, -1e9, -1e9, -1e9]))
            model.encoder.mean.bias.copy_(means[0])
            model.encoder.logvar.bias.copy_(logvars[0])
            log_px = -model.likelihood.nll(model.decoder(torch.zeros(4, 3)), x)
            estimate = model.log_likelihood(x, 7, generator=seeded(4))
            torch.testing.assert_close(estimate, log_px)
        standard = VAEModule(latent_size=3)
        standard.load_state_dict(model.state_dict(), strict=False)
        assert not torch.allclose(
            standard.log_likelihood(x, 7, generator=seeded(4)),
            model.log_likelihood(x, 7, generator=seeded(4)),
        )


def test_a_bad_component_count_is_named() -> None:
    with pytest.raises(UserError, match="prior.num_components=0 is invalid: use 1 or more"):
        VAEModule(prior={**MOG, "num_components": 0})
