"""The plain-torch networks and the LightningModule's inference methods."""

import pytest
import torch

from vaelab import UserError
from vaelab.module import VAEModule
from vaelab.networks import (
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
    ResNetDecoder,
    ResNetEncoder,
    reparameterize,
    resnet_halvings,
)

from ..helpers import mlp_vae


def test_shapes() -> None:
    encoder = MLPEncoder((1, 28, 28), 5, hidden_sizes=[64, 32])
    decoder = MLPDecoder((1, 28, 28), 5, hidden_sizes=[32, 64])
    mean, logvar = encoder(torch.rand(3, 1, 28, 28))
    assert mean.shape == logvar.shape == (3, 5)
    assert decoder(reparameterize(mean, logvar)).shape == (3, 784)


@pytest.mark.parametrize("side,channels", [(32, [4, 8, 8]), (64, [4, 8])])
def test_the_conv_parts_take_any_even_side(side: int, channels: list[int]) -> None:
    shape = (3, side, side)
    encoder = ConvEncoder(shape, 5, channels=channels)
    decoder = ConvDecoder(shape, 5, channels=channels[::-1], outputs_per_value=2)
    mean, logvar = encoder(torch.rand(2, *shape))
    assert mean.shape == logvar.shape == (2, 5)
    assert decoder.start == (channels[-1], side // 2 ** len(channels), side // 2 ** len(channels))
    assert decoder(torch.randn(4, 2, 5)).shape == (4, 2, 2 * 3 * side * side)


@pytest.mark.parametrize(
    "shape,halvings",
    [((1, 8, 8), 1), ((3, 28, 28), 2), ((3, 32, 32), 3), ((1, 64, 64), 4), ((3, 128, 128), 5)]
    + [((1, 7, 7), 0), ((1, 4, 4), 0), ((1, 6, 6), 1), ((3, 16, 64), 2)],
)
def test_the_resnets_halve_while_the_sides_are_even_and_above_4(
    shape: tuple[int, int, int], halvings: int
) -> None:
    assert resnet_halvings(shape) == halvings


TINY_RESNET = {"channels": 2, "max_channels": 4, "blocks": 1}


@pytest.mark.parametrize("colours", [1, 3])
@pytest.mark.parametrize("side", [8, 16, 28, 32, 64])
def test_resnet_shapes_follow_the_image(side: int, colours: int) -> None:
    """Encoder and decoder halve and double as often as resnet_halvings says, the decoder takes
    draws (K, B, latent) and gives outputs_per_value blocks of C*H*W per draw, and each draw
    decodes as it would alone (GroupNorm keeps images apart)."""
    shape, halvings = (colours, side, side), resnet_halvings((colours, side, side))
    encoder = ResNetEncoder(shape, 5, **TINY_RESNET)
    decoder = ResNetDecoder(shape, 5, **TINY_RESNET, outputs_per_value=3)
    strided = [m for m in encoder.body if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    upsampling = [m for m in decoder.body if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(strided) == len(upsampling) == halvings
    smallest = side // 2**halvings
    assert decoder.start == (min(2 * 2**halvings, 4), smallest, smallest)  # doubled, capped
    mean, logvar = encoder(torch.rand(2, *shape))
    assert mean.shape == logvar.shape == (2, 5)
    z = torch.randn(4, 2, 5)  # K = 4 draws for each of B = 2 images
    outputs = decoder(z)
    assert outputs.shape == (4, 2, 3 * colours * side * side)
    torch.testing.assert_close(outputs[1, 0], decoder(z[1, 0]), rtol=1e-4, atol=1e-5)
    # k blocks of C*H*W: the last convolution's channels j*C to (j+1)*C, in order
    maps = decoder.body(decoder.project(z[0]).reshape(-1, *decoder.start))  # (2, 3*C, H, W)
    blocks = outputs[0].reshape(2, 3, colours, side, side)
    torch.testing.assert_close(blocks, maps.reshape(2, 3, colours, side, side))


def test_conditional_resnets_read_the_condition() -> None:
    shape = (3, 16, 16)
    encoder = ResNetEncoder(shape, 5, condition_size=10, **TINY_RESNET)
    decoder = ResNetDecoder(shape, 5, condition_size=10, **TINY_RESNET)
    x, z = torch.rand(2, *shape), torch.randn(4, 2, 5)
    one, other = torch.eye(10)[[1, 2]], torch.eye(10)[[3, 3]]
    assert encoder(x, one)[0].shape == (2, 5) and decoder(z, one).shape == (4, 2, 3 * 16 * 16)
    assert not torch.allclose(encoder(x, one)[0], encoder(x, other)[0])
    assert not torch.allclose(decoder(z, one), decoder(z, other))


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"channels": 0}, "channels=0 is invalid: use a positive width"),
        ({"channels": 32, "max_channels": 16}, "max_channels=16 is invalid: use at least"),
        ({"blocks": -1}, "blocks=-1 is invalid: use 0 or more"),
    ],
)
def test_a_bad_resnet_setting_is_named(settings: dict, message: str) -> None:
    for network in (ResNetEncoder, ResNetDecoder):
        with pytest.raises(UserError, match=message):
            network((1, 8, 8), 2, **settings)


def test_reparameterize_has_the_right_moments() -> None:
    torch.manual_seed(0)
    mean, logvar = (
        torch.full((200_000, 1), 2.0),
        torch.full((200_000, 1), 2 * torch.log(torch.tensor(3.0))),
    )
    z = reparameterize(mean, logvar)
    assert z.mean().item() == pytest.approx(2.0, abs=0.03)
    assert z.std().item() == pytest.approx(3.0, abs=0.03)


def test_gradients_reach_the_encoder_through_the_sample() -> None:
    torch.manual_seed(0)
    model = mlp_vae(hidden_sizes=[16], latent_size=3)
    x = torch.rand(4, 1, 28, 28)
    logits, mean, logvar = model(x)
    logits.sum().backward()  # the decoder's output only: the KL term is left out on purpose
    for head in (model.encoder.mean, model.encoder.logvar, model.encoder.body[0]):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_inference_methods() -> None:
    model = mlp_vae(hidden_sizes=[16, 8], latent_size=3)
    x = torch.rand(5, 1, 28, 28)
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (5, 3)
    recon = model.reconstruct(x)
    assert recon.shape == (5, 1, 28, 28) and 0 <= recon.min() and recon.max() <= 1
    torch.testing.assert_close(recon, model.decode(mean))
    assert model.sample(7).shape == (7, 1, 28, 28)
    assert [
        layer.out_features for layer in model.decoder.body if hasattr(layer, "out_features")
    ] == [8, 16]


def test_sample_is_repeatable_with_a_generator() -> None:
    model = mlp_vae(hidden_sizes=[16], latent_size=3)
    first = model.sample(4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, model.sample(4, generator=torch.Generator().manual_seed(1)))


def test_training_step_returns_the_chapters_loss_per_example() -> None:
    model = mlp_vae(hidden_sizes=[16], latent_size=3)
    x = torch.rand(6, 1, 28, 28)
    torch.manual_seed(0)
    loss = model.training_step((x, torch.zeros(6, dtype=torch.long)), 0)["loss"]
    torch.manual_seed(0)
    mu, logstd = model.encoder(x)
    z = mu + torch.exp(0.5 * logstd) * torch.randn_like(mu)
    bce = torch.nn.functional.binary_cross_entropy(
        torch.sigmoid(model.decoder(z)), x.view(-1, 784), reduction="sum"
    )
    kld = -0.5 * torch.sum(1 + logstd - mu.pow(2) - logstd.exp())
    torch.testing.assert_close(loss, (bce + kld) / len(x))


def test_the_kl_weight_scales_only_the_kl_of_the_objective() -> None:
    x = torch.rand(6, 1, 28, 28)
    model = mlp_vae(hidden_sizes=[16], latent_size=3)
    torch.manual_seed(0)
    recon, kl, _ = model.loss_terms(x)  # (B,) each, from the same noise as each step below
    for weight in (0.0, 0.5, 4.0):
        torch.manual_seed(0)
        objective = model.loss_terms(x, weight=weight).objective
        torch.testing.assert_close(objective, recon + weight * kl)


def test_unknown_optimizer_is_named_in_the_error() -> None:
    with pytest.raises(
        UserError, match="optimizer._target_='torch.optim.Adamm' cannot be imported"
    ):
        VAEModule(optimizer={"_target_": "torch.optim.Adamm"})
    with pytest.raises(UserError, match="optimizer.lr is set by the VAE itself: set model.lr"):
        VAEModule(optimizer={"_target_": "torch.optim.Adam", "lr": 0.1})


@pytest.mark.parametrize(
    "spec",
    [
        {"_target_": "torch.optim.Adam", "betas": [0.5, 0.9], "weight_decay": 0.0},
        {"_target_": "torch.optim.AdamW", "eps": 1e-6, "weight_decay": 0.01},
        {"_target_": "torch.optim.SGD", "momentum": 0.9, "weight_decay": 0.0},
    ],
)
def test_each_optimizer_updates_all_parameters(spec: dict) -> None:
    model = mlp_vae(hidden_sizes=[8], latent_size=2, optimizer=spec, lr=0.01)
    optimizer = model.configure_optimizers()
    assert f"torch.optim.{type(optimizer).__name__}" == spec["_target_"]
    assert optimizer.defaults["lr"] == 0.01  # model.lr
    for key, value in spec.items():  # the config's settings reach the optimizer
        if key != "_target_":
            assert optimizer.defaults[key] == (tuple(value) if key == "betas" else value)
    assert sum(len(group["params"]) for group in optimizer.param_groups) == 10  # 5 layers
    before = [p.detach().clone() for p in model.parameters()]
    model.loss_terms(torch.rand(4, 1, 28, 28)).recon.sum().backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    "spec,lrs",
    [
        (None, [0.01, 0.01, 0.01]),
        (
            {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 2, "gamma": 0.5},
            [0.01, 0.01, 0.005],
        ),
        (
            {"_target_": "torch.optim.lr_scheduler.ExponentialLR", "gamma": 0.9},
            [0.01, 0.009, 0.0081],
        ),
    ],
)
def test_the_scheduler_sets_each_epochs_learning_rate(spec: dict | None, lrs: list[float]) -> None:
    model = mlp_vae(hidden_sizes=[8], latent_size=2, lr=0.01, scheduler=spec)
    configured = model.configure_optimizers()
    if spec is None:
        assert isinstance(configured, torch.optim.Adam)
        return
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert configured["lr_scheduler"]["monitor"] == "val/loss"  # for one that watches it
    seen = []
    for _ in lrs:
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(lrs)


@pytest.mark.slow
def test_compiled_model_matches_and_keeps_checkpoint_keys() -> None:
    """torch.compile on the CPU is slow to start (about 20 s), but the path must work."""
    torch.manual_seed(0)
    compiled = mlp_vae(hidden_sizes=[16], latent_size=3, compile=True)
    plain = mlp_vae(hidden_sizes=[16], latent_size=3)
    plain.load_state_dict(compiled.state_dict())  # same keys, no "_orig_mod." prefix
    for batch_size in (8, 5):  # a smaller last batch must not fail or change results
        x = torch.rand(batch_size, 1, 28, 28)
        torch.manual_seed(1)
        expected = plain.loss_terms(x).objective
        torch.manual_seed(1)
        torch.testing.assert_close(compiled.loss_terms(x).objective, expected)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_fused_optimizer_steps_like_the_plain_one(name: str) -> None:
    """The fused kernel is the same update: five steps, the same weights to float32 rounding."""
    weights = {}
    for fused in (True, False):
        torch.manual_seed(0)
        model = mlp_vae(optimizer={"_target_": f"torch.optim.{name}", "fused": fused})
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        optimizer = model.configure_optimizers()
        assert optimizer.defaults["fused"] is fused
        x = torch.rand(16, 1, 28, 28).bernoulli()
        for _ in range(5):
            optimizer.zero_grad()
            torch.manual_seed(1)
            model.loss_terms(x).objective.mean().backward()
            optimizer.step()
        weights[fused] = torch.cat([p.detach().flatten() for p in model.parameters()])
    # the steps changed the weights, so that the comparison means something
    assert (weights[False] - start).abs().max() > 1e-3
    torch.testing.assert_close(weights[True], weights[False], rtol=1.3e-6, atol=1e-6)


def test_fused_optimizer_falls_back_where_torch_has_no_fused_kernel() -> None:
    model = mlp_vae(optimizer={"_target_": "torch.optim.Adam", "fused": True}).to("meta")
    assert model.device.type == "meta"
    assert model.configure_optimizers().defaults["fused"] is None  # torch's default kernel
