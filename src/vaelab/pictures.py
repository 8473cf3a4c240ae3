"""Pictures of what a VAE learned: image grids, walks through the latent space, latent scatters.

Plain torch, torchvision and matplotlib (its Figure class, not pyplot, so no backend is chosen
for the caller); `scripts/visualize.py` and the training-time ImageLogger draw with them.
"""

from typing import TYPE_CHECKING

import torch
from matplotlib.figure import Figure
from torch import Tensor
from torch.distributions import Normal
from torchvision.utils import make_grid

from vaelab.errors import require

if TYPE_CHECKING:
    from vaelab.module import VAEModule


def pairs_grid(top: Tensor, bottom: Tensor, nrow: int = 8) -> Tensor:
    """One image: each row of `top` above the same row of `bottom`, e.g. digits above their
    reconstructions, in rows of nrow (fewer if there are fewer images; the last row's gaps
    blank). top, bottom (N, C, H, W), N >= 1 -> (C, H', W')."""
    require(len(top) >= 1, "len(top)", len(top), "give at least one image")
    nrow = min(nrow, len(top))
    gap = -len(top) % nrow  # blank images that fill the last row
    pairs = torch.stack([top, bottom])  # (2, N, C, H, W)
    pairs = torch.cat([pairs, pairs.new_zeros(2, gap, *pairs.shape[2:])], dim=1)  # N += gap
    # (2, N, ...) -> (2, rows, nrow, ...) -> (rows, 2, nrow, ...) -> (2N, ...)
    pairs = pairs.unflatten(1, (-1, nrow)).transpose(0, 1).flatten(0, 2)
    return make_grid(pairs, nrow)


def samples_grid(
    model: "VAEModule", n: int, nrow: int, generator: torch.Generator | None = None
) -> Tensor:
    """Decodings of draws from the model's prior: n of them in rows of nrow, or for a
    conditional model one row per class, each row decoding the same nrow draws."""
    if not model.hparams.conditional:
        return make_grid(model.sample(n, generator=generator), nrow)
    classes = torch.arange(model.hparams.num_classes, device=model.device)
    z = model.prior.sample(nrow, generator).repeat(len(classes), 1)  # (classes * nrow, latent)
    return make_grid(model.decode(z, classes.repeat_interleave(nrow)), nrow)


def interpolations_grid(
    model: "VAEModule", images: Tensor, labels: Tensor, rows: int, steps: int
) -> Tensor | None:
    """Rows that walk in latent space, in `steps` steps, between the codes (the means of
    q(z|x)) of two images: image i and image i + rows for the first `rows` images, or for a
    conditional model two images of each class, decoded with their label. None if no pair."""
    if model.hparams.conditional:  # one label must serve the whole way
        starts, ends = same_class_pairs(labels.cpu())
        walk_labels = labels[starts].repeat_interleave(steps)
    else:
        rows = min(rows, len(images) // 2)
        starts, ends = torch.arange(rows), torch.arange(rows, 2 * rows)
        walk_labels = None
    if not len(starts):
        return None
    pairs = torch.cat([starts, ends]).to(images.device)
    given = labels[pairs] if model.hparams.conditional else None
    codes = model.encode(images[pairs], given)[0]  # (2P, latent)
    walks = interpolation_latents(codes[: len(starts)], codes[len(starts) :], steps)
    return make_grid(model.decode(walks, walk_labels), steps)


def interpolation_latents(start: Tensor, end: Tensor, steps: int) -> Tensor:
    """Each row walks in equal steps on the line from a start to its end, both included.

    start, end (P, latent) -> (P * steps, latent), row by row: decode and grid with nrow=steps.
    """
    weights = torch.linspace(0, 1, steps, device=start.device)[:, None]  # (steps, 1)
    walks = start[:, None] + weights * (end - start)[:, None]  # (P, steps, latent)
    return walks.flatten(0, 1)  # (P, steps, latent) -> (P * steps, latent)


def same_class_pairs(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of the first and second example of each class that has two, in class order:
    labels (N,) -> 2 x (P,). A conditional model decodes the way between two digits of one
    class with their common label."""
    starts, ends = [], []
    for label in labels.unique().tolist():  # sorted
        index = torch.nonzero(labels == label).flatten().tolist()
        if len(index) >= 2:
            starts.append(index[0])
            ends.append(index[1])
    return torch.tensor(starts, dtype=torch.long), torch.tensor(ends, dtype=torch.long)


def traversal_latents(z: Tensor, steps: int, limit: float = 3.0) -> Tensor:
    """Row i varies latent dimension i from -limit to limit, the others fixed at z's values.

    z (latent,) -> (latent * steps, latent), row by row: decode and grid with nrow=steps.
    """
    size = len(z)
    rows = z.expand(size, steps, size).clone()  # (latent,) -> (latent rows, steps, latent)
    dims = torch.arange(size)
    rows[dims, :, dims] = torch.linspace(-limit, limit, steps, device=z.device)
    return rows.flatten(0, 1)  # (latent, steps, latent) -> (latent * steps, latent)


def manifold_latents(n: int) -> Tensor:
    """An n x n grid of 2-D latents: evenly spaced probabilities through the standard normal's
    inverse CDF (Kingma & Welling 2014, Fig. 4). z1 grows to the right, z2 upwards.

    -> (n * n, 2), row by row from the top: decode and grid with nrow=n.
    """
    quantiles = Normal(0.0, 1.0).icdf((torch.arange(n) + 0.5) / n)  # (n,), increasing
    z1 = quantiles.expand(n, n)  # columns
    z2 = quantiles.flip(0)[:, None].expand(n, n)  # rows, the largest at the top
    return torch.stack([z1, z2], dim=-1).flatten(0, 1)  # (n, n, 2) -> (n * n, 2)


def principal_components(z: Tensor, k: int = 2) -> Tensor:
    """The coordinates of z along its first k principal axes, by SVD: (N, latent) -> (N, k)."""
    centred = z - z.mean(dim=0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # rows of vh: the axes
    return centred @ vh[:k].T


def latent_scatter(means: Tensor, labels: Tensor, title: str = "") -> Figure:
    """Latent means coloured by digit label: the two latents of a 2-D model, else the first
    two principal components (a 1-D latent is drawn against the label). means (N, latent)."""
    means, labels = means.detach().cpu(), labels.cpu()
    if means.shape[1] > 2:
        points = principal_components(means)
        axes = ("principal component 1", "principal component 2")
    elif means.shape[1] == 2:
        points, axes = means, ("z1", "z2")
    else:
        points, axes = torch.cat([means, labels[:, None].float()], dim=1), ("z1", "digit")
    figure = Figure(figsize=(6, 6), layout="constrained")
    ax = figure.subplots()
    dots = ax.scatter(
        points[:, 0], points[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=3, alpha=0.6
    )
    ax.legend(*dots.legend_elements(), title="digit", loc="upper right", fontsize="small")
    ax.set(xlabel=axes[0], ylabel=axes[1], title=title)
    return figure
