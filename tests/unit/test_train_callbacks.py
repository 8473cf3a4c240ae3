"""Every callback of conf/callbacks/ but the best checkpoint is optional: a run without it
trains, logs val/loss and tests its best checkpoint, as the model logs its own metrics."""

import json
from pathlib import Path

import pytest

from vaelab import UserError
from vaelab.train import train

from ..conftest import TINY_RUN, compose_train

# The callbacks a run cannot do without, and what their absence is refused with.
REQUIRED = {"best_checkpoint": "keep callbacks.best_checkpoint, with its monitor: val/loss"}


def test_a_run_without_any_one_optional_callback_trains_and_tests_its_best_checkpoint(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """In this process, one tiny run per callback: a subprocess each would cost seconds more
    apiece, and a sweep varies one key's values, not which key is null."""
    data = f"data.data_dir={tiny_mnist}"
    names = list(compose_train([data], tmp_path).callbacks)
    optional = [name for name in names if name not in REQUIRED]
    assert set(REQUIRED) < set(names) and len(optional) >= 5  # the group is read, not empty
    for name in optional:
        run_dir = tmp_path / name
        cfg = compose_train([data, *TINY_RUN, f"callbacks.{name}=null"], run_dir)
        assert name not in {key for key, node in cfg.callbacks.items() if node}
        best_val_loss = train(cfg)
        summary = json.loads((run_dir / "metrics.json").read_text())
        metrics = summary["metrics"]
        assert summary["status"] == "completed", name
        assert metrics["val/loss"] == best_val_loss > 0, name  # one epoch: its val/loss is best
        assert metrics["test/loss"] > 0 and metrics["train/loss"] > 0, name
        (best,) = (run_dir / "checkpoints").glob("epoch000-*.ckpt")  # what the test scored


@pytest.mark.parametrize("name", REQUIRED)
def test_a_run_without_a_required_callback_is_refused_naming_it(name: str, tmp_path: Path) -> None:
    overrides = [f"data.data_dir={tmp_path / 'no-data'}", *TINY_RUN, f"callbacks.{name}=null"]
    with pytest.raises(UserError, match=f"callbacks.{name}") as error:
        train(compose_train(overrides, tmp_path))
    assert REQUIRED[name] in str(error.value) and "\n" not in str(error.value)
