"""vaelab.likelihoods and the importance-weighted log-likelihood (Burda et al. 2015):
references and closed forms."""

import math
import re

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from vaelab import UserError
from vaelab.likelihoods import DiscretizedLogistic, Gaussian
from vaelab.losses import (
    bernoulli_nll,
    gaussian_kl,
    gaussian_log_prob,
    iw_log_likelihood,
    log_importance_weights,
    log_normal_standard,
)
from vaelab.module import VAEModule

from ..helpers import mlp_vae


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def model() -> VAEModule:
    torch.manual_seed(0)
    return mlp_vae([32], latent_size=3).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(6, 1, 28, 28, generator=seeded(1)).bernoulli(generator=seeded(2))


def test_gaussian_log_probs_equal_torch_distributions() -> None:
    torch.manual_seed(0)
    z, mean, logvar = torch.randn(5, 4, 3), torch.randn(4, 3), torch.randn(4, 3)
    expected = Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    assert gaussian_log_prob(z, mean, logvar).shape == (5, 4)
    torch.testing.assert_close(gaussian_log_prob(z, mean, logvar), expected)
    torch.testing.assert_close(log_normal_standard(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_iw_log_likelihood_is_the_log_of_the_mean_weight() -> None:
    log_weights = torch.randn(12, 5, generator=seeded(0)) * 3  # (K, B)
    naive = log_weights.exp().mean(0).log()
    torch.testing.assert_close(iw_log_likelihood(log_weights), naive)
    chunks = log_weights.split([5, 5, 2])  # a running logsumexp over chunks gives the same
    torch.testing.assert_close(iw_log_likelihood(iter(chunks)), naive)


def test_iw_log_likelihood_is_finite_where_exp_underflows() -> None:
    log_weights = torch.tensor([[-800.0], [-800.0 + math.log(3)]])  # exp() is 0 in float32
    torch.testing.assert_close(iw_log_likelihood(log_weights), torch.tensor([-800.0 + math.log(2)]))


def test_one_sample_is_the_single_sample_negative_elbo(model: VAEModule, x: torch.Tensor) -> None:
    """K = 1 with the same noise: -(recon + log q(z|x) - log p(z)), from torch.distributions."""
    estimate = model.log_likelihood(x, 1, generator=seeded(3))
    mean, logvar = model.encode(x)
    z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=seeded(3))
    recon = -Bernoulli(logits=model.decoder(z)).log_prob(x.flatten(1)).sum(-1)
    log_q = Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    kl_sample = log_q - Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(estimate, -(recon + kl_sample))


def test_k_samples_are_the_log_mean_of_k_single_ones(model: VAEModule, x: torch.Tensor) -> None:
    """Draw i has its own noise, so K draws at once are K single draws in a row; by Jensen's
    inequality their log-mean weight is never below their mean log-weight."""
    noise = seeded(4)
    singles = torch.stack([model.log_likelihood(x, 1, generator=noise) for _ in range(20)])
    estimate = model.log_likelihood(x, 20, generator=seeded(4))
    torch.testing.assert_close(estimate, torch.logsumexp(singles, 0) - math.log(20))
    assert (estimate >= singles.mean(0)).all()


def test_chunks_change_nothing(model: VAEModule, x: torch.Tensor) -> None:
    whole = model.log_likelihood(x, 10, chunk_size=10, generator=seeded(5))
    for chunk_size in (1, 3, 64):
        chunked = model.log_likelihood(x, 10, chunk_size=chunk_size, generator=seeded(5))
        torch.testing.assert_close(chunked, whole)
    assert not torch.equal(whole, model.log_likelihood(x, 10, generator=seeded(6)))


def test_the_iw_estimate_tightens_the_elbo(model: VAEModule, x: torch.Tensor) -> None:
    """E[L_1] = ELBO <= E[L_5] <= E[L_50] (Burda et al. 2015, Theorem 1), per example."""
    torch.manual_seed(7)
    elbos = []
    for _ in range(400):
        logits, mean, logvar = model(x)
        elbos.append(-(bernoulli_nll(logits, x) + gaussian_kl(mean, logvar)))
    elbos = torch.stack(elbos)  # (draws, B), the ELBO with its KL in closed form
    noise = seeded(8)
    l1 = torch.stack([model.log_likelihood(x, 1, generator=noise) for _ in range(400)])
    l5 = torch.stack([model.log_likelihood(x, 5, generator=noise) for _ in range(400)]).mean(0)
    l50 = torch.stack([model.log_likelihood(x, 50, generator=noise) for _ in range(40)]).mean(0)
    # K = 1 estimates the ELBO: the two means agree within four standard errors
    standard_error = (elbos.var(0) / len(elbos) + l1.var(0) / len(l1)).sqrt()
    assert ((l1.mean(0) - elbos.mean(0)).abs() < 4 * standard_error).all()
    assert (l5 > elbos.mean(0) + 4 * standard_error).all()
    assert (l50 > l5 + 0.2).all()  # standard errors: about 0.05 each


def z_blind_model(prior_as_posterior: bool) -> VAEModule:
    """A VAE whose decoder ignores z, so p(x|z) = p(x) for every z, and whose q(z|x) is fixed:
    the prior itself, or N(0.3, 1.3^2) in each latent dimension."""
    torch.manual_seed(0)
    model = mlp_vae([16], latent_size=2).eval()
    with torch.no_grad():
        model.decoder.body[0].weight.zero_()
        for head in (model.encoder.mean, model.encoder.logvar):
            head.weight.zero_()
        model.encoder.mean.bias.fill_(0.0 if prior_as_posterior else 0.3)
        model.encoder.logvar.bias.fill_(0.0 if prior_as_posterior else 2 * math.log(1.3))
    return model


def test_exact_when_q_is_the_posterior(x: torch.Tensor) -> None:
    """With q(z|x) = p(z) = p(z|x) every weight is p(x): the estimate is exact for any K."""
    model = z_blind_model(prior_as_posterior=True)
    log_px = -bernoulli_nll(model.decoder(torch.zeros(len(x), 2)), x)
    for k in (1, 7):
        torch.testing.assert_close(model.log_likelihood(x, k, generator=seeded(0)), log_px)


def test_converges_to_log_px_when_q_is_not_the_posterior(x: torch.Tensor) -> None:
    """q(z|x) != p(z|x) = p(z): E[log w] = log p(x) - KL(q || p) in closed form, L_K -> log p(x)."""
    model = z_blind_model(prior_as_posterior=False)
    log_px = -bernoulli_nll(model.decoder(torch.zeros(len(x), 2)), x)
    mean, logvar = model.encode(x)  # (B, 2) each
    gap = gaussian_kl(mean, logvar)  # 0.26 nats per example
    z = mean + (0.5 * logvar).exp() * torch.randn(20000, *mean.shape, generator=seeded(1))
    log_px_z = -bernoulli_nll(model.decoder(z), x)  # (20000, B)
    log_q = gaussian_log_prob(z, mean, logvar)
    log_weights = log_importance_weights(log_px_z, log_normal_standard(z), log_q)  # (20000, B)
    standard_error = log_weights.std(0) / math.sqrt(len(log_weights))  # 0.006
    assert ((log_weights.mean(0) - (log_px - gap)).abs() < 4 * standard_error).all()
    estimate = model.log_likelihood(x, 20000, chunk_size=5000, generator=seeded(2))
    torch.testing.assert_close(estimate, log_px, atol=0.02, rtol=0)  # standard error 0.004
    assert (gap > 0.2).all()  # so the ELBO lies well below what the IW estimate reached


def test_a_bad_number_of_samples_is_named(model: VAEModule, x: torch.Tensor) -> None:
    with pytest.raises(UserError, match="iw_samples=0 is invalid: use a positive number"):
        model.log_likelihood(x, 0)
    with pytest.raises(UserError, match="chunk_size=0 is invalid"):
        model.log_likelihood(x, 5, chunk_size=0)


# The Gaussian likelihood for 8-bit images.

D8 = (1, 3, 3)  # nine pixels
GAUSSIAN = {"_target_": "vaelab.likelihoods.Gaussian"}


def eight_bit(n: int = 4) -> torch.Tensor:
    """n images of 8-bit values k / 255, as data.binarize=none serves them."""
    return torch.randint(0, 256, (n, *D8), generator=torch.Generator().manual_seed(1)) / 255


def test_a_gaussian_is_torchs_normal_of_the_sigmoid_mean() -> None:
    x, logits = eight_bit(), torch.randn(4, 9)
    fixed = Gaussian(D8, variance="fixed", sigma=0.2, dequantize=False)
    expected = -Normal(torch.sigmoid(logits), 0.2).log_prob(x.flatten(1)).sum(-1)
    torch.testing.assert_close(fixed.nll(logits, x), expected)
    assert not list(fixed.parameters())  # fixed: a buffer, not trained


def test_the_learned_sigma_is_one_parameter_per_pixel_and_trains() -> None:
    learned = Gaussian(D8, variance="learned", sigma=0.5, dequantize=False)
    (log_sigma,) = learned.parameters()
    assert log_sigma.shape == (9,)
    learned.nll(torch.randn(4, 9), eight_bit()).sum().backward()
    assert log_sigma.grad is not None and log_sigma.grad.abs().sum() > 0


def test_the_optimal_sigma_is_each_images_root_mean_squared_error() -> None:
    """After the sigma-VAE (Rybkin et al. 2021): each image's maximum-likelihood sigma, so an
    image's figure does not depend on the others in its batch."""
    x, logits = eight_bit(), torch.randn(4, 9)
    mse = (x.flatten(1) - torch.sigmoid(logits)).pow(2).mean(-1, keepdim=True)  # (4, 1)
    likelihood = Gaussian(D8, variance="optimal", dequantize=False)
    optimal = likelihood.nll(logits, x)
    expected = -Normal(torch.sigmoid(logits), mse.sqrt()).log_prob(x.flatten(1)).sum(-1)
    torch.testing.assert_close(optimal, expected)
    torch.testing.assert_close(likelihood.nll(logits[:1], x[:1]), optimal[:1])  # alone: same
    # No other sigma gives an image a higher likelihood.
    for sigma in (mse.sqrt() * 0.9, mse.sqrt() * 1.1):
        worse = -Normal(torch.sigmoid(logits), sigma).log_prob(x.flatten(1)).sum(-1)
        assert (worse > optimal).all()


def test_dequantized_nats_bound_the_discrete_pixels_from_above() -> None:
    """-log p(y) + D log 256, y spread over the pixel's bin of width 1/256: on average no
    less than -log P(x) of the pixels' bins under the same Gaussian (up to the average's
    noise), and close to it."""
    x, logits = eight_bit(1), torch.randn(1, 9, generator=torch.Generator().manual_seed(2))
    gaussian = Gaussian(D8, variance="fixed", sigma=0.2)
    torch.manual_seed(0)
    draws = torch.stack([gaussian.nll(logits, x) for _ in range(4000)]).double()
    bound, noise = draws.mean(), 3 * draws.std() / math.sqrt(len(draws))
    normal = Normal(torch.sigmoid(logits).double(), 0.2)
    low = x.flatten(1).double() * 255 / 256  # each bin [k / 256, (k + 1) / 256)
    discrete = -torch.log(normal.cdf(low + 1 / 256) - normal.cdf(low)).sum()
    assert discrete - noise <= bound < discrete + 0.05


def test_the_dequantization_draws_from_the_estimates_generator() -> None:
    """log p(x) from the same generator is the same, and torch's global generator is left
    as it was, so that evaluate.py's figures do not depend on what ran before."""
    model = mlp_vae([8], latent_size=2, image_shape=D8, likelihood=GAUSSIAN)
    x = eight_bit()
    state = torch.get_rng_state()
    first = model.log_likelihood(x, 5, generator=torch.Generator().manual_seed(3))
    second = model.log_likelihood(x, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second) and torch.equal(torch.get_rng_state(), state)
    other = model.log_likelihood(x, 5, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(first, other)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"variance": "per_pixel"}, "variance='per_pixel' is invalid: use fixed, learned or"),
        ({"sigma": 0.0}, "sigma=0.0 is invalid: use a positive standard deviation"),
    ],
)
def test_bad_gaussian_settings_are_named(settings: dict, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        Gaussian(D8, **settings)


# The mixture of discretized logistics (Salimans et al. 2017).

LOGISTIC = {"_target_": "vaelab.likelihoods.DiscretizedLogistic", "num_mixtures": 2}


@pytest.mark.parametrize("log_scale", [-7.0, -4.0, -1.0, 1.0])
def test_a_discretized_pixels_256_probabilities_sum_to_one(log_scale: float) -> None:
    likelihood = DiscretizedLogistic(num_mixtures=3)
    weights, means = torch.randn(3), torch.tensor([-0.9, 0.1, 0.8])
    logits = torch.cat([weights, means, torch.full((3,), log_scale)]).view(1, 9)  # D = 1
    values = torch.arange(256).view(256, 1, 1, 1) / 255
    log_p = torch.stack([-likelihood.nll(logits, v.view(1, 1, 1, 1)) for v in values])
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-4)


def test_one_component_is_a_logistic_cdf_over_the_pixels_bin() -> None:
    mean, scale, x = 0.2, 0.05, torch.tensor([[[[100 / 255]]]])
    logits = torch.tensor([[0.0, mean, math.log(scale)]])
    v = 2 * 100 / 255 - 1
    expected = torch.sigmoid(torch.tensor((v + 1 / 255 - mean) / scale)) - torch.sigmoid(
        torch.tensor((v - 1 / 255 - mean) / scale)
    )
    nll = DiscretizedLogistic(num_mixtures=1).nll(logits, x)
    assert nll.item() == pytest.approx(-math.log(expected.item()), rel=1e-5)


def test_the_logistic_mean_is_the_mixtures_mean_in_0_1() -> None:
    likelihood = DiscretizedLogistic(num_mixtures=2)
    logits = torch.tensor([[0.0, math.log(3.0), -1.0, 0.6, -2.0, -2.0]])  # weights 1/4, 3/4
    assert likelihood.mean(logits).item() == pytest.approx(((-0.25 + 0.45) + 1) / 2)


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_the_decoder_gives_the_likelihood_its_parameters_per_pixel(network: str) -> None:
    """3 k outputs per pixel value for k components; pictures still get one value each."""
    shape = (3, 8, 8)
    parts = {"mlp": {"hidden_sizes": [8]}, "conv": {"channels": [4]}}[network]
    name = {"mlp": "MLP", "conv": "Conv"}[network]
    encoder = {"_target_": f"vaelab.networks.{name}Encoder", **parts}
    decoder = {"_target_": f"vaelab.networks.{name}Decoder", **parts}
    model = VAEModule(
        encoder=encoder, decoder=decoder, likelihood=LOGISTIC, latent_size=2, image_shape=shape
    )
    z = torch.randn(5, 2)
    assert model.decoder(z).shape == (5, 3 * 2 * math.prod(shape))
    assert model.decode(z).shape == (5, *shape)
    x = torch.randint(0, 256, (5, *shape)) / 255
    assert model.loss_terms(x).recon.shape == (5,) and model.loss_terms(x).recon.isfinite().all()


def test_a_decoder_that_cannot_give_more_outputs_is_refused() -> None:
    message = r"gives one output per pixel value, but model\.likelihood takes 6"
    with pytest.raises(UserError, match=message):
        VAEModule(decoder={"_target_": "tests.helpers.OneOutputDecoder"}, likelihood=LOGISTIC)


def coupled_logits(k: int, channels: int, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Random decoder outputs for a coupled mixture: 4 k blocks of D = channels * pixels."""
    logits = torch.randn(1, 4 * k * channels * pixels, generator=generator)
    return (
        logits.view(1, 4, k, channels * pixels)
        .mul(torch.tensor([1.0, 0.5, 1.0, 2.0]).view(1, 4, 1, 1))
        .flatten(1)
    )


def test_coupled_channels_normalize_jointly_over_every_pair_of_values() -> None:
    """Two channels of one pixel: the 65,536 probabilities of (first, second) sum to 1."""
    likelihood = DiscretizedLogistic(num_mixtures=2, coupled_channels=True, image_shape=(2, 1, 1))
    logits = coupled_logits(2, 2, 1, torch.Generator().manual_seed(0))
    logits[:, 4:8] = -2.5  # log scales: peaked enough that coupling moves mass a lot
    values = torch.cartesian_prod(torch.arange(256), torch.arange(256)).float() / 255
    log_p = -likelihood.nll(logits.expand(len(values), -1), values.view(-1, 2, 1, 1))
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-4)


def test_coupled_means_move_with_the_channels_before() -> None:
    """p(r) p(g|r) p(b|r,g): each a mixture whose means are shifted by tanh(coefficient) times
    the values before, the red slot's coefficient on green, the green and blue slots' on blue."""
    k, generator = 2, torch.Generator().manual_seed(1)
    coupled = DiscretizedLogistic(num_mixtures=k, coupled_channels=True, image_shape=(3, 1, 1))
    independent = DiscretizedLogistic(num_mixtures=k)
    assert (coupled.outputs_per_value, independent.outputs_per_value) == (4 * k, 3 * k)
    logits = coupled_logits(k, 3, 1, generator)
    x = torch.tensor([40.0, 200.0, 90.0]).view(1, 3, 1, 1) / 255
    v = 2 * x.flatten() - 1
    blocks = logits.view(4, k, 3)  # (weights, means, log scales, coefficients), k, channel
    c = torch.tanh(blocks[3])  # (k, 3): slots rg, rb, gb
    shifted = blocks[:3].clone()
    shifted[1, :, 1] += c[:, 0] * v[0]
    shifted[1, :, 2] += c[:, 1] * v[0] + c[:, 2] * v[1]
    expected = independent.nll(shifted.flatten().view(1, -1), x)
    assert coupled.nll(logits, x).item() == pytest.approx(expected.item(), rel=1e-6)
    assert coupled.nll(logits, x).item() != pytest.approx(
        independent.nll(blocks[:3].flatten().view(1, -1), x).item(), rel=1e-3
    )
    # Its mean: with one component, green's is its own plus the coefficient times red's.
    one = DiscretizedLogistic(num_mixtures=1, coupled_channels=True, image_shape=(3, 1, 1))
    logits = torch.tensor([[0.0, 0, 0, 0.2, -0.4, 0.1, -3, -3, -3, 1.0, 0.5, -0.5]])
    r, g = 0.2, -0.4 + math.tanh(1.0) * 0.2
    b = 0.1 + math.tanh(0.5) * r + math.tanh(-0.5) * g
    assert one.mean(logits)[0].tolist() == pytest.approx([(r + 1) / 2, (g + 1) / 2, (b + 1) / 2])


def test_coupling_takes_two_or_three_channels() -> None:
    assert (
        DiscretizedLogistic(3, coupled_channels=True, image_shape=(1, 8, 8)).outputs_per_value == 9
    )
    with pytest.raises(UserError, match="coupled_channels=True is invalid: images of 4 channels"):
        DiscretizedLogistic(3, coupled_channels=True, image_shape=(4, 8, 8))


@pytest.mark.parametrize("network", ["mlp", "resnet"])
def test_a_decoder_gives_a_coupled_likelihood_its_coefficients(network: str) -> None:
    shape, k = (3, 8, 8), 2
    parts = {"mlp": {"hidden_sizes": [8]}, "resnet": {"channels": 4, "max_channels": 8}}[network]
    name = {"mlp": "MLP", "resnet": "ResNet"}[network]
    coupled = {**LOGISTIC, "coupled_channels": True}
    model = VAEModule(
        encoder={"_target_": f"vaelab.networks.{name}Encoder", **parts},
        decoder={"_target_": f"vaelab.networks.{name}Decoder", **parts},
        likelihood=coupled,
        latent_size=2,
        image_shape=shape,
    )
    z = torch.randn(5, 2)
    assert model.decoder(z).shape == (5, 4 * k * math.prod(shape))
    assert model.decode(z).shape == (5, *shape)
    x = torch.randint(0, 256, (5, *shape)) / 255
    recon = model.loss_terms(x).recon
    assert recon.shape == (5,) and recon.isfinite().all()
    log_px = model.log_likelihood(x, 3, chunk_size=2, generator=torch.Generator().manual_seed(0))
    assert log_px.shape == (5,) and log_px.isfinite().all()


@pytest.mark.parametrize("count", [0, -1, 2.5])
def test_bad_numbers_of_components_are_named(count: object) -> None:
    with pytest.raises(UserError, match=f"num_mixtures={count!r} is invalid"):
        DiscretizedLogistic(num_mixtures=count)  # type: ignore[arg-type]
