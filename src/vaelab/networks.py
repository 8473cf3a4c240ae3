"""Plain-torch VAE networks: MLP encoder and decoder, and the reparameterization trick."""

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given widths, each followed by a ReLU."""
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """q(z|x): an MLP with a mean head and a log-variance head."""

    def __init__(self, input_size: int, hidden_sizes: Sequence[int], latent_size: int) -> None:
        super().__init__()
        self.body = mlp([input_size, *hidden_sizes])
        self.mean = nn.Linear(hidden_sizes[-1], latent_size)
        self.logvar = nn.Linear(hidden_sizes[-1], latent_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x.flatten(1))  # (B, 1, 28, 28) -> (B, 784) -> (B, hidden)
        return self.mean(h), self.logvar(h)


class Decoder(nn.Module):
    """p(x|z): an MLP from the latent to one Bernoulli logit per pixel."""

    def __init__(self, latent_size: int, hidden_sizes: Sequence[int], output_size: int) -> None:
        super().__init__()
        self.body = mlp([latent_size, *hidden_sizes])
        self.logits = nn.Linear(hidden_sizes[-1], output_size)

    def forward(self, z: Tensor) -> Tensor:
        return self.logits(self.body(z))  # (B, latent) -> (B, 784)


def reparameterize(mean: Tensor, logvar: Tensor) -> Tensor:
    """z = mean + std * eps with eps ~ N(0, I), differentiable in mean and logvar."""
    return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
