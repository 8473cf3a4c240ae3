"""Statistics of an evaluation: the standard error of a mean, and the active latent units."""

import math

from torch import Tensor


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
