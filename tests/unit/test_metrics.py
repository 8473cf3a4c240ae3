"""The statistics: an epoch's sums and the means the model logs from them without any
callback, the standard error of a mean, and the active units."""

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from vaelab import UserError
from vaelab.data import MNISTDataModule
from vaelab.diagnostics import ActiveUnits
from vaelab.losses import Terms
from vaelab.metrics import EpochSums, active_units, standard_error
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


def test_epoch_sums_add_up_each_stage_by_name_and_go_on_from_their_state() -> None:
    sums = EpochSums(["a", "b"])
    sums.add("train", [torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0])])
    sums.add("val", [torch.tensor([5.0]), torch.tensor([7.0])])
    sums.add("train", [torch.tensor([3.0]), torch.tensor([30.0])])
    state = sums.state_dict("train")
    assert state["count"] == 3 and {name: float(t) for name, t in state["sums"].items()} == {
        "a": 6.0,
        "b": 60.0,
    }
    assert sums.pop("train").tolist() == [6.0, 60.0, 3.0]  # the count last
    assert sums.pop("val").tolist() == [5.0, 7.0, 1.0]
    assert sums.state_dict("train") == {"sums": {"a": 0.0, "b": 0.0}, "count": 0}
    resumed = EpochSums(["a", "b"])
    resumed.load_state_dict("train", state, torch.device("cpu"))
    resumed.add("train", [torch.tensor([1.0]), torch.tensor([1.0])])
    assert resumed.pop("train").tolist() == [7.0, 61.0, 4.0]
    with pytest.raises(UserError, match=r"epoch sums are of \['a', 'b'\], but this model's"):
        EpochSums(["a", "c"]).load_state_dict("train", state, torch.device("cpu"))


def test_the_model_logs_each_terms_epoch_mean_with_no_callback(tiny_mnist: Path) -> None:
    """The test set in two batches: test/kl (no noise in the standard prior's closed form) is
    the mean over all its images, whatever the batches, and test/loss is recon + kl."""
    torch.manual_seed(0)
    model = VAEModule(latent_size=4)
    data = MNISTDataModule(str(tiny_mnist), val_size=64, eval_batch_size=100)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu")
    (metrics,) = trainer.test(model, datamodule=data, verbose=False)
    terms = {f"test/{name}" for name in Terms._fields if name != "objective"}
    assert set(metrics) == terms | {"test/loss", "test/bpd"}
    with torch.no_grad():
        kl = model.loss_terms(data.test_images).kl  # (160,)
    assert metrics["test/kl"] == pytest.approx(kl.mean().item(), rel=1e-6)
    assert metrics["test/loss"] == pytest.approx(metrics["test/recon"] + metrics["test/kl"])
    pixels = math.prod(model.hparams.image_shape)  # bits per dimension: nats / (D ln 2)
    assert metrics["test/bpd"] == pytest.approx(metrics["test/loss"] / (pixels * math.log(2)))
