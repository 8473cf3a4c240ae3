"""The evaluation's statistics: the standard error of a mean, and the active units."""

import math

import numpy as np
import torch

from vaelab.metrics import active_units, standard_error
from vaelab.module import VAEModule


def test_the_standard_error_is_the_sample_deviation_over_root_n() -> None:
    values = torch.randn(500, generator=torch.Generator().manual_seed(0)) * 3 + 90
    expected = np.std(values.numpy().astype(np.float64), ddof=1) / math.sqrt(500)
    assert math.isclose(standard_error(values), expected, rel_tol=1e-12)


def test_active_units_counts_the_dimensions_the_encoder_uses() -> None:
    """An encoder whose mean head ignores the input in dimensions 1 and 3 (constant means)
    and uses it strongly in the others: 6 - 2 = 4 active units."""
    torch.manual_seed(0)
    model = VAEModule(latent_size=6).eval()
    with torch.no_grad():
        model.encoder.mean.weight.mul_(20)
        model.encoder.mean.weight[[1, 3]] = 0.0
        images = torch.rand(300, 1, 28, 28)
        means = model.encode(images)[0]  # (300, 6)
    variances = means.var(dim=0)
    assert (variances[[1, 3]] == 0).all() and (variances[[0, 2, 4, 5]] > 0.01).all()
    assert active_units(means) == 4
    assert active_units(means, threshold=variances.max().item()) == 0  # strictly above it
