"""vaelab.schedules and the module's schedules per optimizer step (interval: step), in-process
on a tiny model: the warm-up cosine's curve, OneCycleLR over the trainer's step count, and a
resumed run's lr, step by step (the staged schedule: tests/unit/test_train_presets.py)."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from vaelab import UserError
from vaelab.schedules import WarmupCosineLR

from ..helpers import TINY, batches, mlp_vae, trainer

WARMUP_COSINE = {
    "_target_": "vaelab.schedules.WarmupCosineLR",
    "warmup_steps": 3,
    "eta_min": 0.001,
    "interval": "step",
}
ONE_CYCLE = {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "interval": "step"}


def test_warmup_cosine_rises_linearly_then_falls_along_a_cosine() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = WarmupCosineLR(optimizer, total_steps=7, warmup_steps=3, eta_min=0.001)
    rates = []
    for _ in range(9):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    cosine = [0.001 + 0.009 * (1 + math.cos(math.pi * p)) / 2 for p in (0, 0.25, 0.5, 0.75, 1)]
    # steps 0-2 warm up to the optimizer's lr, 3-7 follow the cosine, and it holds after 7
    assert rates == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, *cosine, 0.001])
    assert cosine[0] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"total_steps": 0}, "total_steps=0 is invalid: use 1 or more"),
        ({"warmup_steps": -1}, "warmup_steps=-1 is invalid: use 0"),
        ({"eta_min": -0.1}, "eta_min=-0.1 is invalid: use a learning rate >= 0"),
    ],
)
def test_warmup_cosine_names_a_bad_setting(settings: dict, message: str) -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    with pytest.raises(UserError, match=message):
        WarmupCosineLR(optimizer, **{"total_steps": 10, **settings})


class RecordLR(L.Callback):
    """The lr of each optimizer step, as it starts; a checkpoint saved after step `save_at`."""

    def __init__(self, save_at: int = 0, path: Path | None = None) -> None:
        self.rates: list[float] = []
        self.save_at, self.path = save_at, path

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.path and trainer.global_step == self.save_at:
            trainer.save_checkpoint(self.path)


def test_a_schedule_per_step_spreads_over_the_trainers_steps(tmp_path: Path) -> None:
    """Two epochs of 5 batches: OneCycleLR's total_steps and max_lr are the trainer's 10 steps
    and model.lr, and the lr changes at each of them, as a OneCycleLR stepped per step gives."""
    record = RecordLR()
    run = trainer(tmp_path, [record], max_epochs=2)
    run.fit(mlp_vae(**TINY, lr=0.01, scheduler=ONE_CYCLE), batches())
    (config,) = run.lr_scheduler_configs
    assert config.interval == "step" and config.scheduler.total_steps == 10
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=0.01)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=10)
    expected = []
    for _ in range(10):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert record.rates == pytest.approx(expected) and len(set(record.rates)) == 10


def test_a_resumed_run_follows_the_uninterrupted_runs_lr_at_each_step(tmp_path: Path) -> None:
    """Saved after step 3 of 10 (inside the first epoch) and resumed: each later step's lr is
    the uninterrupted run's, the warm-up cosine stepped on by the optimizer steps done."""
    path = tmp_path / "step3.ckpt"
    uninterrupted = RecordLR(save_at=3, path=path)
    trainer(tmp_path, [uninterrupted], max_epochs=2).fit(
        mlp_vae(**TINY, lr=0.01, scheduler=WARMUP_COSINE), batches()
    )
    resumed = RecordLR()
    trainer(tmp_path, [resumed], max_epochs=2).fit(
        mlp_vae(**TINY, lr=0.01, scheduler=WARMUP_COSINE), batches(), ckpt_path=path
    )
    assert len(uninterrupted.rates) == 10 and uninterrupted.rates[2] == pytest.approx(0.01)
    assert resumed.rates == uninterrupted.rates[3:]


def test_a_schedule_over_the_fits_steps_needs_a_fit_of_known_length(tmp_path: Path) -> None:
    run = trainer(tmp_path, [], max_epochs=-1)
    with pytest.raises(UserError) as error:
        run.fit(mlp_vae(**TINY, scheduler=WARMUP_COSINE), batches())
    assert "trainer.max_epochs=-1 and trainer.max_steps=-1 give no count" in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "spec,message",
    [
        ({**ONE_CYCLE, "interval": "epoch"}, "interval='epoch' is invalid for OneCycleLR, .*step"),
        ({**ONE_CYCLE, "total_steps": 5}, "total_steps is set by the VAE itself: set trainer"),
        ({**ONE_CYCLE, "max_lr": 5}, "max_lr is set by the VAE itself: set model.lr"),
        (
            {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "interval": "step"},
            "interval='step' is invalid for ReduceLROnPlateau, which watches val/loss",
        ),
        (
            {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 2, "interval": "batch"},
            "interval='batch' is invalid: use epoch or step",
        ),
    ],
)
def test_a_bad_interval_is_named_when_the_model_is_built(spec: dict, message: str) -> None:
    with pytest.raises(UserError, match=f"^scheduler.{message}"):
        mlp_vae(**TINY, scheduler=spec)
