"""The error a user's mistake raises, in plain Python: the parts that raise it need neither
Hydra nor Lightning, and the entry points print it as one line (`vaelab.console`)."""


class UserError(ValueError):
    """A mistake in the user's setup or config; its message names the value and the fix."""


def require(ok: bool, name: str, value: object, accepted: str) -> None:
    """Raise a UserError naming the argument, its value and what is accepted, unless ok."""
    if not ok:
        raise UserError(f"{name}={value!r} is invalid: {accepted}")
