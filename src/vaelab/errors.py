"""The error a user's mistake raises, in plain Python: the parts that raise it need neither
Hydra nor Lightning, and the entry points print it as one line (`vaelab.console`). Also
what torch said when it refused a file, read in one place."""

import re


class UserError(ValueError):
    """A mistake in the user's setup or config; its message names the value and the fix."""


def require(ok: bool, name: str, value: object, accepted: str) -> None:
    """Raise a UserError naming the argument, its value and what is accepted, unless ok."""
    if not ok:
        raise UserError(f"{name}={value!r} is invalid: {accepted}")


def torch_load_refusal(err: Exception) -> tuple[str | None, str]:
    """Why `torch.load(weights_only=True)` refused a file: the function or class its pickle
    calls, if that was the reason (torch 2.14: "Unsupported global: GLOBAL x.y was not an
    allowed global", or "unsupported GLOBAL x.y whose module x is blocked"), else None; and
    the first sentence of torch's reason, without its advice to load the file unsafely."""
    text = str(err)
    code = re.search(r"GLOBAL ([\w.]+)", text)
    reason = text.partition("WeightsUnpickler error:")[2] or text
    reason = reason.strip().partition("\n")[0].partition(". ")[0] or type(err).__name__
    return (code[1] if code else None), reason
