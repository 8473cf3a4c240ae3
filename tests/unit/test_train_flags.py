"""The Trainer flags in conf/trainer/default.yaml: Lightning's defaults, each one settable."""

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.profilers import SimpleProfiler
from omegaconf import OmegaConf

from vaelab import UserError
from vaelab.config import check_types

from ..conftest import compose_train

# Each flag with a value other than its default, and what the built Trainer then shows.
FLAGS: dict[str, tuple[str, Callable[[L.Trainer], object], object]] = {
    "min_epochs": ("2", lambda t: t.min_epochs, 2),
    "max_epochs": ("3", lambda t: t.max_epochs, 3),
    "min_steps": ("5", lambda t: t.min_steps, 5),
    "max_steps": ("100", lambda t: t.max_steps, 100),
    "max_time": (
        '"00:01:00:00"',
        lambda t: next(c for c in t.callbacks if isinstance(c, Timer)).time_remaining(),
        3600.0,
    ),
    "limit_train_batches": ("0.25", lambda t: t.limit_train_batches, 0.25),
    "limit_val_batches": ("10", lambda t: t.limit_val_batches, 10),
    "limit_test_batches": ("10", lambda t: t.limit_test_batches, 10),
    "overfit_batches": ("2", lambda t: (t.overfit_batches, t.limit_train_batches), (2, 2)),
    "val_check_interval": ("0.5", lambda t: t.val_check_interval, 0.5),
    "check_val_every_n_epoch": ("5", lambda t: t.check_val_every_n_epoch, 5),
    "num_sanity_val_steps": ("0", lambda t: t.num_sanity_val_steps, 0),
    "log_every_n_steps": ("10", lambda t: t.log_every_n_steps, 10),
    "accumulate_grad_batches": ("4", lambda t: t.accumulate_grad_batches, 4),
    "gradient_clip_val": ("1.0", lambda t: t.gradient_clip_val, 1.0),
    "gradient_clip_algorithm": ("value", lambda t: t.gradient_clip_algorithm, "value"),
    "fast_dev_run": ("true", lambda t: (t.fast_dev_run, t.limit_train_batches), (True, 1)),
    "detect_anomaly": ("true", lambda t: t._detect_anomaly, True),
    "profiler": ("simple", lambda t: type(t.profiler), SimpleProfiler),
    "deterministic": ("true", lambda t: torch.are_deterministic_algorithms_enabled(), True),
    "benchmark": ("true", lambda t: torch.backends.cudnn.benchmark, True),
}
# Keys whose value here is not the signature's default, and why.
NOT_LIGHTNING_DEFAULTS = {
    "_target_",
    "max_epochs",  # 10 here; Lightning's None means 1000
    "default_root_dir",  # the run folder
    "precision",  # 32-true written out: None means it
    "plugins",  # vaelab's AtomicCheckpointIO: every checkpoint renamed into place
    "deterministic",  # false written out: None means it, and false resets a process's setting
    "accelerator",  # hardware/
    "devices",  # hardware/
}


@pytest.fixture(autouse=True)
def torch_flags(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restore what deterministic=true and benchmark=true set for the whole process."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # set back afterwards
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = benchmark


def test_the_defaults_are_lightnings_own(tmp_path: Path) -> None:
    cfg = compose_train([], tmp_path)
    check_types(cfg)
    parameters = inspect.signature(L.Trainer.__init__).parameters
    trainer = OmegaConf.to_container(cfg.trainer)
    assert set(FLAGS) <= set(trainer)
    for key, value in trainer.items():
        if key not in NOT_LIGHTNING_DEFAULTS:
            assert value == parameters[key].default, key
    assert (trainer["max_epochs"], trainer["precision"], trainer["deterministic"]) == (
        10,
        "32-true",
        False,
    )


@pytest.mark.parametrize("flag", FLAGS)
def test_each_flag_is_set_without_a_plus(flag: str, tmp_path: Path) -> None:
    value, read, expected = FLAGS[flag]
    cfg = compose_train(["hardware=cpu", f"trainer.{flag}={value}"], tmp_path)
    check_types(cfg)
    trainer = instantiate(cfg.trainer, _convert_="all")  # as train.py builds it
    assert read(trainer) == expected


def test_a_profiler_node_is_built_into_the_run_folder(tmp_path: Path) -> None:
    node = "{_target_:lightning.pytorch.profilers.SimpleProfiler,dirpath:${output_dir},filename:p}"
    cfg = compose_train([f"trainer.profiler={node}"], tmp_path)
    check_types(cfg)
    profiler = instantiate(cfg.trainer, _convert_="all").profiler
    assert isinstance(profiler, SimpleProfiler) and Path(profiler.dirpath) == tmp_path


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.max_steps=1.5", "trainer.max_steps=1.5 has the wrong type: int expected"),
        ("trainer.limit_train_batches=all", "trainer.limit_train_batches='all' has the wrong"),
        ("trainer.detect_anomaly=1", "trainer.detect_anomaly=1 has the wrong type: bool"),
        # a node that builds something other than a Profiler
        ("trainer.profiler={_target_:lightning.pytorch.callbacks.Timer}", "trainer.profiler="),
    ],
)
def test_a_flag_of_the_wrong_type_is_named(override: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        check_types(compose_train([override], tmp_path))
