"""Plain-torch VAE networks: MLP and convolutional encoders and decoders, optionally
conditioned on a vector c (a one-hot label), and the reparameterization trick.

Each network is built from the image's shape, the latent size and the condition's size,
which the VAE passes, and from its own settings, which its config gives.
"""

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaelab.errors import require

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(sizes: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers of the given widths, each followed by the activation."""
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


def check_mlp(hidden_sizes: Sequence[int], activation: str) -> None:
    require(
        len(hidden_sizes) > 0 and all(h >= 1 for h in hidden_sizes),
        "hidden_sizes",
        hidden_sizes,
        "use a non-empty list of positive widths, e.g. [400]",
    )
    require(activation in ACTIVATIONS, "activation", activation, f"use {' or '.join(ACTIVATIONS)}")


def check_conv(channels: Sequence[int], image_shape: Sequence[int]) -> None:
    require(
        len(channels) > 0 and all(c >= 1 for c in channels),
        "channels",
        channels,
        "use a non-empty list of positive channel counts, e.g. [32, 64]",
    )
    side = image_shape[-1]
    halvings = (side & -side).bit_length() - 1  # how often side can be halved exactly
    if halvings == 0:  # an odd side: not one stride-2 convolution fits
        accepted = (
            f"the {side}x{side} images cannot be halved by a stride-2 convolution; "
            "use model/encoder=mlp model/decoder=mlp, or images of an even side"
        )
    else:
        example = [32 * 2**i for i in range(min(halvings, 2))]
        accepted = (
            f"each convolution halves the {side}x{side} image, so give at most {halvings} "
            f"channel counts, e.g. {example}"
        )
    require(side % 2 ** len(channels) == 0, "channels", channels, accepted)


class MLPEncoder(nn.Module):
    """q(z|x): an MLP with a mean head and a log-variance head; optionally also given c."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_size: int,
        condition_size: int = 0,
        hidden_sizes: Sequence[int] = (400,),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_mlp(hidden_sizes, activation)
        self.body = mlp([math.prod(image_shape) + condition_size, *hidden_sizes], activation)
        self.mean = nn.Linear(hidden_sizes[-1], latent_size)
        self.logvar = nn.Linear(hidden_sizes[-1], latent_size)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = with_condition(x.flatten(1), c)  # (B, C, H, W) -> (B, C*H*W [+ k])
        h = self.body(h)  # (B, C*H*W [+ k]) -> (B, hidden)
        return self.mean(h), self.logvar(h)


class MLPDecoder(nn.Module):
    """p(x|z): an MLP from the latent (and c) to one logit per pixel."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_size: int,
        condition_size: int = 0,
        hidden_sizes: Sequence[int] = (400,),
        activation: str = "relu",
        outputs_per_value: int = 1,
    ) -> None:
        """hidden_sizes: from the latent towards the image, e.g. the encoder's reversed.
        outputs_per_value: the likelihood's parameters per pixel value (set by the VAE)."""
        super().__init__()
        check_mlp(hidden_sizes, activation)
        self.body = mlp([latent_size + condition_size, *hidden_sizes], activation)
        self.logits = nn.Linear(hidden_sizes[-1], math.prod(image_shape) * outputs_per_value)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        return self.logits(self.body(with_condition(z, c)))  # (..., latent) -> (..., k*C*H*W)


class ConvEncoder(nn.Module):
    """q(z|x) from strided convolutions (each halves the image), then the two heads."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_size: int,
        condition_size: int = 0,
        channels: Sequence[int] = (32, 64),
    ) -> None:
        super().__init__()
        check_conv(channels, image_shape)
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise([image_shape[0], *channels]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Flatten())
        side = image_shape[-1] // 2 ** len(channels)
        features = channels[-1] * side * side + condition_size
        self.mean = nn.Linear(features, latent_size)
        self.logvar = nn.Linear(features, latent_size)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = with_condition(self.body(x), c)  # (B, C, H, W) -> (B, c, h, w) -> (B, c*h*w [+ k])
        return self.mean(h), self.logvar(h)


class ConvDecoder(nn.Module):
    """p(x|z): a linear layer to a small feature map, then transposed convolutions to logits."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_size: int,
        condition_size: int = 0,
        channels: Sequence[int] = (64, 32),
        outputs_per_value: int = 1,
    ) -> None:
        """channels: from the small feature map towards the image, each doubling its side.
        outputs_per_value: the likelihood's parameters per pixel value (set by the VAE)."""
        super().__init__()
        check_conv(channels, image_shape)
        side = image_shape[-1] // 2 ** len(channels)
        self.start = (channels[0], side, side)
        self.project = nn.Sequential(
            nn.Linear(latent_size + condition_size, math.prod(self.start)), nn.ReLU()
        )
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise([*channels, image_shape[0] * outputs_per_value]):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1),
                nn.ReLU(),
            ]
        self.body = nn.Sequential(*layers[:-1])  # no ReLU on the logits

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        h = self.project(with_condition(z, c))  # (..., latent [+ C]) -> (..., 64 * 7 * 7)
        leading = h.shape[:-1]
        h = self.body(h.reshape(-1, *self.start))  # (N, c, h, w) -> (N, k*C, H, W)
        return h.reshape(*leading, -1)  # (N, k*C, H, W) -> (..., k*C*H*W): k blocks of C*H*W


def with_condition(z: Tensor, c: Tensor | None) -> Tensor:
    """z with c appended to its last dimension; c (B, k), one-hot of k classes, is repeated over
    z's leading draws."""
    return z if c is None else torch.cat([z, c.expand(*z.shape[:-1], c.shape[-1])], -1)


def reparameterize(mean: Tensor, logvar: Tensor) -> Tensor:
    """z = mean + std * eps with eps ~ N(0, I), differentiable in mean and logvar."""
    return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
