"""vaelab: variational autoencoders on MNIST with PyTorch Lightning and Hydra."""


class UserError(Exception):
    """A mistake in the user's setup or config; entry points print it without a traceback."""


def require(ok: bool, name: str, value: object, accepted: str) -> None:
    """Raise a UserError naming the argument, its value and what is accepted, unless ok."""
    if not ok:
        raise UserError(f"{name}={value!r} is invalid: {accepted}")
