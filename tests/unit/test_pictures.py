"""The picture-making functions: grid layouts, latent walks, the manifold grid, the scatter."""

import pytest
import torch
from torch.distributions import Normal

from vaelab import UserError
from vaelab.pictures import (
    interpolation_latents,
    latent_scatter,
    manifold_latents,
    pairs_grid,
    principal_components,
    same_class_pairs,
    traversal_latents,
)


def test_pairs_grid_puts_each_row_above_its_partner() -> None:
    top, bottom = torch.ones(4, 1, 28, 28), torch.zeros(4, 1, 28, 28)
    grid = pairs_grid(top, bottom, nrow=2)  # rows: top 0-1, bottom 0-1, top 2-3, bottom 2-3
    assert grid.shape == (3, 4 * 30 + 2, 2 * 30 + 2)  # make_grid pads by 2 pixels
    centres = grid[0, 2 + 14 :: 30, 2 + 14 :: 30]  # the centre pixel of each image
    assert centres.tolist() == [[1, 1], [0, 0], [1, 1], [0, 0]]
    with pytest.raises(UserError, match="len\\(top\\)=0 is invalid: give at least one image"):
        pairs_grid(top[:0], bottom[:0], nrow=2)  # any other count is drawn: test_bad_inputs.py


def test_interpolations_walk_from_start_to_end() -> None:
    start, end = torch.tensor([[0.0, 0.0], [1.0, -1.0]]), torch.tensor([[4.0, 2.0], [1.0, 1.0]])
    walks = interpolation_latents(start, end, steps=5).view(2, 5, 2)  # (P * steps, 2) -> rows
    torch.testing.assert_close(walks[:, 0], start)
    torch.testing.assert_close(walks[:, -1], end)
    torch.testing.assert_close(walks[0, 1], torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(walks[1, 2], (start[1] + end[1]) / 2)


def test_same_class_pairs_join_two_digits_of_each_class() -> None:
    labels = torch.tensor([3, 1, 3, 7, 1, 1, 3])  # 7 appears once: no pair
    starts, ends = same_class_pairs(labels)
    assert starts.tolist() == [1, 0] and ends.tolist() == [4, 2]  # classes 1 and 3, in order
    assert torch.equal(labels[starts], labels[ends])
    assert same_class_pairs(torch.tensor([0, 1, 2]))[0].numel() == 0


def test_traversals_move_one_dimension_per_row() -> None:
    z = torch.tensor([0.5, -1.0, 2.0])
    rows = traversal_latents(z, steps=7).view(3, 7, 3)
    for dim in range(3):
        torch.testing.assert_close(rows[dim, :, dim], torch.linspace(-3, 3, 7))
        others = [d for d in range(3) if d != dim]
        torch.testing.assert_close(rows[dim][:, others], z[others].expand(7, 2))


def test_the_manifold_grid_follows_normal_quantiles() -> None:
    z = manifold_latents(4).view(4, 4, 2)  # (rows, columns, 2)
    probabilities = Normal(0.0, 1.0).cdf(z)
    expected = torch.tensor([0.125, 0.375, 0.625, 0.875])
    torch.testing.assert_close(probabilities[0, :, 0], expected)  # z1 grows to the right
    torch.testing.assert_close(probabilities[:, 0, 1], expected.flip(0))  # z2 grows upwards
    assert torch.equal(z[:, :, 0], z[0, :, 0].expand(4, 4))  # columns share z1


def test_principal_components_find_the_main_axis() -> None:
    generator = torch.Generator().manual_seed(0)
    t = torch.randn(500, generator=generator)
    z = t[:, None] * torch.tensor([0.6, 0.0, 0.8]) + 0.05 * torch.randn(500, 3, generator=generator)
    pcs = principal_components(z + 7)  # the mean is removed
    assert pcs.shape == (500, 2)
    assert torch.corrcoef(torch.stack([pcs[:, 0], t]))[0, 1].abs() > 0.99
    assert pcs[:, 0].var() > 50 * pcs[:, 1].var()


@pytest.mark.parametrize("latent_size,xlabel", [(2, "z1"), (5, "principal component 1")])
def test_the_scatter_has_a_dot_per_image(latent_size: int, xlabel: str) -> None:
    means, labels = torch.randn(300, latent_size), torch.arange(300) % 10
    figure = latent_scatter(means, labels, "test")
    (ax,) = figure.axes
    assert ax.get_xlabel() == xlabel and ax.get_title() == "test"
    assert ax.collections[0].get_offsets().shape == (300, 2)
    assert len(ax.get_legend().get_texts()) == 10  # one entry per digit
    if latent_size == 2:
        torch.testing.assert_close(
            torch.as_tensor(ax.collections[0].get_offsets().data, dtype=torch.float32), means
        )
