"""vaelab.errors: the parts raise UserError without Hydra; the entry points print it as one line."""

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import CompactHydraException

from vaelab import UserError
from vaelab.console import OneLineError, one_line_errors
from vaelab.errors import torch_load_refusal

# Modules that copy into another project with torch alone.
PLAIN_TORCH = ("networks", "priors", "likelihoods", "losses", "schedules", "errors")


def test_the_parts_import_where_hydra_and_lightning_cannot() -> None:
    blocked = ("hydra", "omegaconf", "lightning", "pytorch_lightning")
    code = "; ".join(
        [
            "import sys",
            *(f"sys.modules[{name!r}] = None" for name in blocked),  # importing them fails
            *(f"import vaelab.{module}" for module in PLAIN_TORCH),
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{blocked!r} and sys.modules[m] is not None))",
        ]
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_user_error_is_a_value_error_and_not_hydras() -> None:
    assert issubclass(UserError, ValueError) and not issubclass(UserError, CompactHydraException)


def test_the_entry_points_make_it_hydras_one_line_error() -> None:
    with pytest.raises(OneLineError, match=r"^model.lr=-1 is invalid: use lr > 0$") as caught:
        with one_line_errors():
            raise UserError("model.lr=-1 is invalid: use lr > 0")
    assert isinstance(caught.value, CompactHydraException) and caught.value.__cause__ is None
    with pytest.raises(KeyError):  # other errors pass as they are
        with one_line_errors():
            raise KeyError("x")


class Calls:
    """An object whose pickle calls print when loaded: code, to torch's safe loading."""

    def __reduce__(self) -> tuple:
        return print, ("ran",)


def test_torch_load_refusal_names_the_call_or_the_first_sentence(tmp_path: Path) -> None:
    (tmp_path / "code.pt").write_bytes(pickle.dumps(Calls(), protocol=2))  # as torch.save
    (tmp_path / "text.pt").write_text("not a pickle")
    reasons = []
    for name in ("code.pt", "text.pt"):
        with pytest.raises(Exception) as caught:
            torch.load(tmp_path / name, weights_only=True)
        reasons.append(torch_load_refusal(caught.value))
    (code, _), (none, reason) = reasons
    assert code == "print" and none is None  # torch names builtins without their module
    assert reason and "\n" not in reason and "weights_only" not in reason
