"""Plain-torch VAE networks: MLP, convolutional and residual encoders and decoders, optionally
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


class FeatureEncoder(nn.Module):
    """q(z|x) from a body that maps images to flat features, then a mean and a log-variance
    head: the convolutional encoders' shared end."""

    body: nn.Module

    def heads(self, features: int, latent_size: int) -> None:
        self.mean = nn.Linear(features, latent_size)
        self.logvar = nn.Linear(features, latent_size)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = with_condition(self.body(x), c)  # (B, C, H, W) -> (B, c, h, w) -> (B, c*h*w [+ k])
        return self.mean(h), self.logvar(h)


class ConvEncoder(FeatureEncoder):
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
        self.heads(channels[-1] * side * side + condition_size, latent_size)


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
        h = self.project(with_condition(z, c))  # (..., latent [+ k]) -> (..., c*h*w)
        leading = h.shape[:-1]
        h = self.body(h.reshape(-1, *self.start))  # (N, c, h, w) -> (N, k*C, H, W)
        return h.reshape(*leading, -1)  # (N, k*C, H, W) -> (..., k*C*H*W): k blocks of C*H*W


def resnet_halvings(image_shape: Sequence[int]) -> int:
    """How often the residual networks halve a (C, H, W) image: while both sides are even and
    above 4, e.g. 32 -> 4 in 3 halvings, 64 -> 4 in 4, 28 -> 7 in 2, an odd side in none."""
    height, width = image_shape[-2:]
    count = 0
    while height % 2 == 0 and width % 2 == 0 and min(height, width) > 4:
        height, width, count = height // 2, width // 2, count + 1
    return count


def resnet_widths(channels: int, max_channels: int, levels: int) -> list[int]:
    """The width at each resolution, from the image's down: doubled per halving up to the cap."""
    return [min(channels * 2**level, max_channels) for level in range(levels)]


def check_resnet(channels: int, max_channels: int, blocks: int) -> None:
    require(channels >= 1, "channels", channels, "use a positive width, e.g. 32")
    require(
        max_channels >= channels,
        "max_channels",
        max_channels,
        f"use at least channels={channels}, e.g. {8 * channels}",
    )
    require(blocks >= 0, "blocks", blocks, "use 0 or more residual blocks per resolution, e.g. 1")


def resnet_plan(
    image_shape: Sequence[int], channels: int, max_channels: int, blocks: int
) -> tuple[int, list[int], int, tuple[int, int]]:
    """A ResNet's halvings, its width at each resolution, its depth in blocks (which scales
    the blocks' last weights) and the smallest feature map's (rows, cols)."""
    check_resnet(channels, max_channels, blocks)
    halvings = resnet_halvings(image_shape)
    widths = resnet_widths(channels, max_channels, halvings + 1)
    rows, cols = (side // 2**halvings for side in image_shape[-2:])
    return halvings, widths, max(1, blocks * len(widths)), (rows, cols)


def group_norm(width: int) -> nn.GroupNorm:
    """GroupNorm (Wu & He 2018) of up to 32 groups: statistics of each image alone, so that a
    batch of one, or K draws of z decoded together, give what each would give by itself."""
    return nn.GroupNorm(math.gcd(width, 32), width)


class ResidualBlock(nn.Module):
    """x + f(x), f = (GroupNorm, SiLU, 3x3 conv) twice: a pre-activation block (He et al. 2016)
    of the kind NVAE and VDVAE stack, without their squeeze-excitation or bottleneck."""

    def __init__(self, width: int, scale: float = 1.0) -> None:
        """scale: of the last convolution's initial weights; VDVAE scales them by
        1/sqrt(depth) so that the sum of many blocks starts small."""
        super().__init__()
        self.body = nn.Sequential(
            group_norm(width),
            nn.SiLU(),
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            group_norm(width),
            nn.SiLU(),
            nn.Conv2d(width, width, kernel_size=3, padding=1),
        )
        with torch.no_grad():
            self.body[-1].weight.mul_(scale)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)  # (N, c, h, w) -> (N, c, h, w)


def residual_stage(width: int, blocks: int, depth: int) -> list[nn.Module]:
    """`blocks` residual blocks of one resolution, in a network of `depth` blocks in all."""
    return [ResidualBlock(width, 1 / math.sqrt(depth)) for _ in range(blocks)]


class ResNetEncoder(FeatureEncoder):
    """q(z|x) from residual blocks at each resolution, halved by 4x4 stride-2 convolutions
    while the sides are even and above 4 (`resnet_halvings`), then the two heads."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_size: int,
        condition_size: int = 0,
        channels: int = 16,
        max_channels: int = 64,
        blocks: int = 1,
    ) -> None:
        """channels: the width at the image's resolution, doubled per halving up to
        max_channels. blocks: residual blocks per resolution."""
        super().__init__()
        halvings, widths, depth, (rows, cols) = resnet_plan(
            image_shape, channels, max_channels, blocks
        )
        layers: list[nn.Module] = [nn.Conv2d(image_shape[0], widths[0], kernel_size=3, padding=1)]
        for level, width in enumerate(widths):
            layers += residual_stage(width, blocks, depth)
            if level < halvings:  # (N, c, h, w) -> (N, c', h/2, w/2)
                layers.append(
                    nn.Conv2d(width, widths[level + 1], kernel_size=4, stride=2, padding=1)
                )
        layers += [group_norm(widths[-1]), nn.SiLU(), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.heads(widths[-1] * rows * cols + condition_size, latent_size)


class ResNetDecoder(nn.Module):
    """p(x|z): a linear layer to the smallest feature map, then residual blocks at each
    resolution, doubled by 4x4 stride-2 transposed convolutions, and a 3x3 convolution to the
    likelihood's parameters; the encoder's resolutions and widths in reverse."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_size: int,
        condition_size: int = 0,
        channels: int = 16,
        max_channels: int = 64,
        blocks: int = 1,
        outputs_per_value: int = 1,
    ) -> None:
        """channels: the width at the image's resolution, doubled per halving up to
        max_channels. blocks: residual blocks per resolution.
        outputs_per_value: the likelihood's parameters per pixel value (set by the VAE)."""
        super().__init__()
        _, widths, depth, (rows, cols) = resnet_plan(image_shape, channels, max_channels, blocks)
        self.start = (widths[-1], rows, cols)
        self.project = nn.Linear(latent_size + condition_size, math.prod(self.start))
        layers: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            layers += residual_stage(widths[level], blocks, depth)
            if level > 0:  # (N, c, h, w) -> (N, c', 2h, 2w)
                layers.append(
                    nn.ConvTranspose2d(
                        widths[level], widths[level - 1], kernel_size=4, stride=2, padding=1
                    )
                )
        out = image_shape[0] * outputs_per_value
        layers += [group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], out, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        h = self.project(with_condition(z, c))  # (..., latent [+ k]) -> (..., c*h*w)
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
