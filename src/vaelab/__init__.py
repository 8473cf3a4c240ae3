"""vaelab: variational autoencoders with PyTorch Lightning and Hydra."""

from hydra.errors import CompactHydraException


class UserError(CompactHydraException):
    """A mistake in the user's setup or config.

    A CompactHydraException, so that Hydra's entry points print its message alone, without
    a traceback, and a sweep still sees the job fail.
    """


def require(ok: bool, name: str, value: object, accepted: str) -> None:
    """Raise a UserError naming the argument, its value and what is accepted, unless ok."""
    if not ok:
        raise UserError(f"{name}={value!r} is invalid: {accepted}")
