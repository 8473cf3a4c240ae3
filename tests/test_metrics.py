"""The evaluation's statistics: the standard error of a mean, and the active units."""

import math
from pathlib import Path

import lightning as L
import numpy as np
import torch

from vaelab.callbacks import ActiveUnits
from vaelab.data import MNISTDataModule
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
    variances = means.double().var(dim=0)  # as active_units computes them, on any CPU
    assert (variances[[1, 3]] == 0).all() and (variances[[0, 2, 4, 5]] > 0.01).all()
    assert active_units(means) == 4
    assert active_units(means, threshold=variances.max().item()) == 0  # strictly above it


def test_active_units_are_logged_after_each_validation(tiny_mnist: Path) -> None:
    """The callback counts on the validation images what `active_units` counts directly."""
    torch.manual_seed(0)
    model = VAEModule(latent_size=6)
    with torch.no_grad():
        model.encoder.mean.weight.mul_(20)
        model.encoder.mean.weight[[1, 3]] = 0.0
    data = MNISTDataModule(str(tiny_mnist), val_size=64, eval_batch_size=32)
    trainer = L.Trainer(
        callbacks=[ActiveUnits()], logger=False, enable_progress_bar=False, accelerator="cpu"
    )
    trainer.validate(model, datamodule=data, verbose=False)
    expected = active_units(model.encode(data.val_images)[0].detach())
    assert expected == 4  # the two ignored dimensions are not active
    assert trainer.callback_metrics["val/active_units"].item() == expected
