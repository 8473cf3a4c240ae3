"""Learning-rate schedules that torch lacks (a schedule given as stages of epochs, a warm-up then
a cosine over optimizer steps), and checks of the settings of torch's own, which torch takes
without a word."""

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LRScheduler,
    ReduceLROnPlateau,
    StepLR,
)

from vaelab.errors import require


class StagedLR(LRScheduler):
    """The optimizer's lr times factors[i] during stage i, which lasts epochs[i] epochs; after
    the last stage its factor holds. Burda et al. (2015) train with such a schedule.

    Stepped once per epoch. Its state (`state_dict`) is plain numbers and lists, so a checkpoint
    loaded with weights_only=True restores the stage it was in.
    """

    def __init__(
        self, optimizer: Optimizer, epochs: Sequence[int], factors: Sequence[float]
    ) -> None:
        require(len(factors) >= 1, "factors", factors, "give one or more, e.g. [1.0, 0.1]")
        require(
            len(epochs) == len(factors),
            "epochs",
            epochs,
            f"give one length per factor, {len(factors)} for factors={list(factors)}",
        )
        require(all(e >= 1 for e in epochs), "epochs", epochs, "use stage lengths >= 1")
        require(all(f > 0 for f in factors), "factors", factors, "use factors > 0, e.g. 0.1")
        self.epochs, self.factors = list(epochs), list(factors)  # plain lists for state_dict
        super().__init__(optimizer)

    def factor(self, epoch: int) -> float:
        """The factor of the stage that `epoch` (counted from 0) falls in."""
        end = 0
        for length, factor in zip(self.epochs, self.factors, strict=True):
            end += length
            if epoch < end:
                return factor
        return self.factors[-1]

    def get_lr(self) -> list[float]:
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]


class WarmupCosineLR(LRScheduler):
    """The optimizer's lr reached linearly over `warmup_steps` steps (Goyal et al. 2017), then
    a cosine from it down to `eta_min` at `total_steps` (Loshchilov & Hutter 2017), held there.

    Stepped once per optimizer step (interval: step); the VAE gives `total_steps`, the fit's
    optimizer steps. The lr of step t (from 0) is lr * (t + 1) / warmup_steps during the warm-up,
    then eta_min + (lr - eta_min) * (1 + cos(pi * p)) / 2 with p = (t - warmup_steps) /
    (total_steps - warmup_steps). Its state is plain numbers.
    """

    def __init__(
        self, optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, eta_min: float = 0.0
    ) -> None:
        require(total_steps >= 1, "total_steps", total_steps, "use 1 or more optimizer steps")
        require(warmup_steps >= 0, "warmup_steps", warmup_steps, "use 0 (none) or more steps")
        require(eta_min >= 0, "eta_min", eta_min, "use a learning rate >= 0, e.g. 0.0")
        self.total_steps, self.warmup_steps, self.eta_min = total_steps, warmup_steps, eta_min
        super().__init__(optimizer)

    def lr_at(self, step: int, base_lr: float) -> float:
        """The lr of optimizer step `step` (counted from 0) for a schedule from `base_lr`."""
        if step < self.warmup_steps:
            return base_lr * (step + 1) / self.warmup_steps
        progress = min(
            1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        )
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * progress)) / 2

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch, base_lr) for base_lr in self.base_lrs]


def check_scheduler(scheduler: LRScheduler | ReduceLROnPlateau, name: str = "scheduler") -> None:
    """Raise a UserError for a setting of torch's schedulers that torch accepts but that fails
    at the first epoch's end (a division by zero), makes the learning rate negative, or
    reduces it at every epoch; `name` prefixes the key. val/loss, which a plateau schedule
    watches, is minimized, so its mode must be "min"."""

    def check(ok: bool, key: str, accepted: str) -> None:
        require(ok, f"{name}.{key}", getattr(scheduler, key), accepted)

    if isinstance(scheduler, StepLR):
        check(scheduler.step_size >= 1, "step_size", "use 1 or more epochs")
    if isinstance(scheduler, StepLR | ExponentialLR):
        check(scheduler.gamma > 0, "gamma", "use a factor > 0, e.g. 0.5")
    if isinstance(scheduler, CosineAnnealingLR):
        check(
            scheduler.T_max >= 1,
            "T_max",
            "use 1 or more epochs, or steps with interval: step (set it when max_epochs=-1)",
        )
        check(scheduler.eta_min >= 0, "eta_min", "use 0 or more")
    if isinstance(scheduler, ReduceLROnPlateau):
        check(scheduler.mode == "min", "mode", "use min: val/loss is minimized")
        check(scheduler.factor > 0, "factor", "use 0 < factor < 1, e.g. 0.5")
        check(scheduler.patience >= 0, "patience", "use 0 or more epochs")
