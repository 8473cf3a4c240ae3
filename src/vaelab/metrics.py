"""Statistics of training and evaluation: an epoch's sums, the standard error of a mean, and
the active latent units."""

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from vaelab.errors import UserError


class EpochSums:
    """Running sums over an epoch of named per-example values, per stage, on their device:
    adding a batch reads nothing back to the host, so a step never waits for the device."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.sums: dict[str, Tensor] = {}  # per stage: one sum per name, (len(names),)
        self.counts: dict[str, int] = {}  # per stage: the examples added

    def add(self, stage: str, values: Sequence[Tensor]) -> None:
        """Add a batch's values, one (B,) tensor per name."""
        batch = torch.stack([value.detach().sum() for value in values])  # (len(names),)
        self.sums[stage] = self.sums[stage] + batch if stage in self.sums else batch
        self.counts[stage] = self.counts.get(stage, 0) + len(values[0])

    def pop(self, stage: str) -> Tensor:
        """The stage's sums with its count last, (len(names) + 1,); the stage starts over."""
        sums = self.sums.pop(stage)
        return torch.cat([sums, sums.new_tensor([self.counts.pop(stage)])])

    def state_dict(self, stage: str) -> dict[str, Any]:
        """The stage's sums so far by name, and its count: plain values for a checkpoint."""
        sums = self.sums[stage].cpu() if stage in self.sums else torch.zeros(len(self.names))
        return {
            "sums": dict(zip(self.names, sums, strict=True)),
            "count": self.counts.get(stage, 0),
        }

    def load_state_dict(self, stage: str, state: dict[str, Any], device: torch.device) -> None:
        """Go on from a `state_dict`'s sums, on `device`."""
        if not state["count"]:  # saved at an epoch's end
            return
        if list(state["sums"]) != list(self.names):
            raise UserError(
                f"the checkpoint's epoch sums are of {list(state['sums'])}, but this model's "
                f"terms are {list(self.names)}: resume from a checkpoint saved at an epoch's end"
            )
        self.sums[stage] = torch.stack(list(state["sums"].values())).to(device)
        self.counts[stage] = state["count"]


def standard_error(values: Tensor) -> float:
    """The standard error of the mean of values (N,): their sample standard deviation over
    sqrt(N), e.g. of test/nll_iw over the test images."""
    return values.double().std().item() / math.sqrt(len(values))


def active_units(means: Tensor, threshold: float = 0.01) -> int:
    """The latent dimensions u with Cov_x(E_q(z|x)[z_u]) > threshold (Burda et al. 2015,
    Sec. 5.2): means (N, latent), the means of q(z|x) of N images -> a count."""
    if len(means) < 2:  # one image has no spread
        return 0
    return int((means.double().var(dim=0) > threshold).sum())
