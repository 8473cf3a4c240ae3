"""Checks of a composed config: values left to give (???), and types against the constructors."""

import hashlib
import math
import os
import tempfile
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from vaelab.errors import UserError, require


def check_types(cfg: DictConfig) -> None:
    """Raise a UserError naming a value left to give, or one of a type its constructor rejects.

    YAML carries no types, so Hydra would pass `model.latent_size=abc` on as a string.
    A hand-written check of the few kinds of hint used here spares a dependency such as
    typeguard, and is run on the resolved config before anything is built.
    """
    if missing := sorted(OmegaConf.missing_keys(cfg)):
        raise UserError(
            f"{', '.join(missing)} must be given on the command line, e.g. {missing[0]}=..."
        )
    for path, node in _target_nodes(cfg, ""):
        try:
            hints = typing.get_type_hints(get_object(node["_target_"]).__init__)
        except NameError:  # a hint names a type imported only for type checkers, as
            hints = {}  # WandbLogger's `Run`: that class's values go unchecked
        for name, value in node.items():
            if name in hints and not _matches(value, hints[name]):
                raise UserError(
                    f"{path}{name}={value!r} has the wrong type: {_describe(hints[name])} expected"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{path}{name}={value!r} is invalid: use a finite number")


SEEDS = range(2**32)  # what Lightning's seed_everything, and numpy under it, accept


def check_run(cfg: DictConfig) -> None:
    """Raise a UserError for a seed that Lightning would reject, trainer settings under which
    no validation would run (so no best checkpoint would be kept), or a checkpoint or logger
    folder that cannot be written: before anything is built, rather than after the fit."""
    seed = cfg.seed
    good_seed = seed is None or (_is_int(seed) and seed in SEEDS)
    require(good_seed, "seed", seed, f"use an integer from 0 to {SEEDS[-1]}, or null (random)")
    for name, node in cfg.callbacks.items():
        if node and "dirpath" in node:
            check_writable(f"callbacks.{name}.dirpath", node.dirpath)
    for key, value, folder in logger_folders(cfg.logger, "logger"):
        check_writable(key, folder, value)
    trainer = cfg.trainer
    if trainer.fast_dev_run:  # one batch of each stage, whatever the other settings say
        return
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    if _is_int(max_epochs) and (max_epochs == 0 or max_epochs < -1):
        raise UserError(
            f"trainer.max_epochs={max_epochs} is invalid: use 1 or more "
            "(or -1 for no limit, with trainer.max_steps)"
        )
    if _is_int(max_steps) and (max_steps == 0 or max_steps < -1):
        raise UserError(
            f"trainer.max_steps={max_steps} is invalid: use 1 or more, or -1 (no limit)"
        )
    # overfit_batches, when set, takes the place of both limits
    limits = {"limit_train_batches": "training", "limit_val_batches": "validation"}
    for key, stage in limits.items() if not trainer.overfit_batches else ():
        if (value := trainer[key]) == 0 and not isinstance(value, bool):
            raise UserError(
                f"trainer.{key}={value} is invalid: no {stage} would run, so no best checkpoint "
                "would be kept; use a fraction of the batches (0 < f <= 1.0) or a number of them "
                "(1 or more)"
            )
    every = trainer.check_val_every_n_epoch
    if _is_int(every) and _is_int(max_epochs) and every > max_epochs > 0:
        raise UserError(
            f"trainer.check_val_every_n_epoch={every} is invalid with trainer.max_epochs="
            f"{max_epochs}: no validation would run, so no best checkpoint would be kept; "
            f"use at most {max_epochs}"
        )


def logger_folders(node: Any, key: str) -> Iterator[tuple[str, str, str]]:
    """The local folders that a logger's config (or, with logger=many, each of its loggers')
    writes to, as key, value and folder: `save_dir`, and MLflow's artifact_location and the
    folder of its SQLite file."""
    if not isinstance(node, DictConfig):
        return
    if node.get("_target_") == "builtins.dict":  # logger=many: a logger under each key
        for name, logger in node.items():
            yield from logger_folders(logger, f"{key}.{name}")
        return
    for name in ("save_dir", "artifact_location"):
        if isinstance(folder := node.get(name), str) and "://" not in folder:
            yield f"{key}.{name}", folder, folder.removeprefix("file:")
    uri = node.get("tracking_uri")
    if isinstance(uri, str) and uri.startswith("sqlite:///"):  # sqlite:////abs/or rel/path.db
        yield f"{key}.tracking_uri", uri, str(Path(uri.removeprefix("sqlite:///")).parent)


def check_writable(key: str, folder: str, value: str | None = None) -> None:
    """Raise a UserError unless `folder` is a folder this process can write in, or make; the
    message names `key` with its `value` (by default the folder)."""
    path = Path(folder).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        problem = f"{existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        try:  # root passes os.access even where nothing can be made, e.g. in /proc
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".vaelab-write-check-"))
            return
        except OSError as err:
            problem = f"{existing} is not writable ({err.strerror})"
    raise UserError(f"{key}={value or folder} cannot be written: {problem}; choose another folder")


FOLDER_NAME_BYTES = 240  # longer job folder names are shortened: Linux allows 255 bytes,
KEPT_BYTES = 230  # with the job number before it; a shortened one keeps this much


def folder_name(overrides: str) -> str:
    """A sweep job's folder name from its overrides (Hydra's override_dirname): "/", as in
    model/prior=vamp, becomes "." so the folder is not nested; a name longer than
    FOLDER_NAME_BYTES (UTF-8) keeps its first KEPT_BYTES and ends in "-" and 8 hex digits of
    the whole name's SHA-1, so that names stay distinct and the file system takes them."""
    name = overrides.replace("/", ".")
    encoded = name.encode()
    if len(encoded) <= FOLDER_NAME_BYTES:
        return name
    kept = encoded[:KEPT_BYTES].decode(errors="ignore")  # not half a character
    return f"{kept}-{hashlib.sha1(encoded).hexdigest()[:8]}"


def check_sweep(hydra: DictConfig) -> None:
    """Raise a UserError for a sweep setting under which joblib or Optuna would fail with a
    traceback: no jobs at once, no trials, or no trials at a time."""
    launcher, sweeper = hydra.launcher, hydra.sweeper
    if "joblib" in launcher._target_ and launcher.n_jobs == 0:
        raise UserError(
            "hydra.launcher.n_jobs=0 is invalid: use 1 or more jobs at once, or -1 for one per "
            "CPU core"
        )
    if "optuna" in sweeper._target_:
        trials, at_once = sweeper.n_trials, sweeper.n_jobs
        require(_is_int(trials) and trials >= 1, "hydra.sweeper.n_trials", trials, "use 1 or more")
        at_once_ok = _is_int(at_once) and at_once >= 1
        require(at_once_ok, "hydra.sweeper.n_jobs", at_once, "use 1 or more trials at a time")


class OutputCheck(Callback):
    """A Hydra callback that names in one line what would otherwise end in a traceback: a run
    or sweep folder that cannot be written (before Hydra tries to make it), a sweep setting
    that joblib or Optuna cannot use, and an Optuna search in which every trial failed. Hydra
    turns an exception in a callback into a warning and goes on, so this one ends the process
    itself."""

    failures: list[str] | None = None  # an in-process Optuna search's failures, while all are

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")
        try:
            check_sweep(config.hydra)
        except UserError as err:
            raise SystemExit(str(err)) from None
        # Jobs of Hydra's basic launcher end here, in this process; a new study has no trials.
        in_process = config.hydra.launcher._target_.endswith(".BasicLauncher")
        new_study = "optuna" in config.hydra.sweeper._target_ and not config.hydra.sweeper.storage
        self.failures = [] if in_process and new_study else None

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """End an Optuna search whose every trial failed, which Optuna would end with a
        ValueError traceback ("No trials are completed yet"), naming the first failure."""
        if self.failures is None:
            return
        if job_return.status != JobStatus.FAILED:
            self.failures = None  # a trial completed: Optuna has a best one
            return
        try:
            _ = job_return.return_value  # a failed job's, raised
        except Exception as err:
            self.failures.append(str(err))
        trials = config.hydra.sweeper.n_trials
        if len(self.failures) == trials:
            raise SystemExit(
                f"every one of the {trials} trials failed, so the search has no best "
                f"parameters; the first failed with: {self.failures[0]} "
                f"(each job's train.log in {config.hydra.sweep.dir} has its error)"
            )

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        # A folder that does not resolve yet is left to Hydra.
        if folder := OmegaConf.select(config, key, throw_on_resolution_failure=False):
            try:
                check_writable(key, folder)
            except UserError as err:
                raise SystemExit(str(err)) from None  # printed to stderr; exit status 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _target_nodes(node: Any, path: str) -> Iterator[tuple[str, dict]]:
    """Each dict with a `_target_` in the resolved config, with its dotted path."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _target_nodes(value, f"{path}{key}.")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple, Sequence):
        return isinstance(value, list | tuple) and all(_matches(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if _is_class(hint):
        return isinstance(value, hint) or _builds(value, hint)
    return True  # hints of other kinds are not checked


def _builds(value: Any, cls: type) -> bool:
    """Whether value is a node that Hydra builds into a `cls`, e.g. trainer.profiler's."""
    if not isinstance(value, dict) or "_target_" not in value or value.get("_partial_"):
        return False
    target = get_object(value["_target_"])
    return isinstance(target, type) and issubclass(target, cls)


def _is_class(hint: Any) -> bool:
    """Whether hint is a plain class; on Python 3.10 `Sequence[int]` passes isinstance(_, type)."""
    return typing.get_origin(hint) is None and isinstance(hint, type)


def _describe(hint: Any) -> str:
    if _is_class(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")
