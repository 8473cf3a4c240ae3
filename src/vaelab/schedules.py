"""Learning-rate schedules that torch lacks: a schedule given as stages of epochs."""

from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from vaelab import require


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
