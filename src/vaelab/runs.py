"""The run folder: one run at a time in it, and no run replaced unasked."""

import fcntl
import os
import shutil
from pathlib import Path
from typing import Any, TextIO

from hydra.experimental.callback import Callback
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, open_dict

from vaelab.errors import UserError

# What a training run writes into its folder, besides Hydra's .hydra/ and train.log.
RUN_OUTPUTS = (
    "checkpoints",
    "metrics.json",
    "evaluations",
    "hparams.yaml",
    "csv",
    "mlflow.db",
    "mlartifacts",
    "wandb",
    "figures",
    "fit-profile.txt",
    "test-profile.txt",
)
TENSORBOARD_EVENTS = "events.out.tfevents.*"
LOCK_FILE = ".lock"  # holds the process id of the run that has the folder


def run_outputs(folder: Path) -> list[Path]:
    """The files and folders in `folder` that a training run wrote."""
    named = [folder / name for name in RUN_OUTPUTS if (folder / name).exists()]
    return named + sorted(folder.glob(TENSORBOARD_EVENTS))


class FolderRefused(UserError):
    """This run may not run in its folder: another run's metrics.json there is not its to write."""


HELD: dict[Path, TextIO] = {}  # the run folders this process holds the lock of, till it ends


def claim_folder(cfg: DictConfig) -> None:
    """Take the lock of the run folder, for as long as this process lives, and refuse a folder
    that holds a run unless `resume=true` continues it or `overwrite=true` removes it (which
    this does). Processes of rank > 0 (DDP) share rank 0's folder and claim nothing."""
    if rank_zero_only.rank != 0:
        return
    if cfg.resume and cfg.overwrite:
        raise FolderRefused(
            "give resume=true (continue the run in the folder) or overwrite=true (replace it), "
            "not both"
        )
    folder = Path(cfg.output_dir).absolute()
    if folder not in HELD:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 (held open while the run lasts)
        try:
            # A POSIX record lock belongs to this process alone: DataLoader workers forked
            # from it do not hold it, so a resume right after a SIGKILL is not refused while
            # they wind down (flock's lock would be theirs too).
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EAGAIN or EACCES: another process holds it
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise FolderRefused(
                f"{folder} is in use by another run (process {holder}): let it finish, or give "
                "this run another folder with hydra.run.dir=..."
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        HELD[folder] = lock
    held = run_outputs(folder)
    if not held or cfg.resume:
        return
    names = ", ".join(path.name + "/" * path.is_dir() for path in held[:3])
    names += ", ..." if len(held) > 3 else ""
    if not cfg.overwrite:
        raise FolderRefused(
            f"{folder} holds a run ({names}): continue it with resume=true, give this run "
            "another folder (hydra.run.dir=...), or replace it with overwrite=true"
        )
    if cfg.ckpt_path and Path(cfg.ckpt_path).absolute().is_relative_to(folder):
        raise FolderRefused(
            f"overwrite=true would delete ckpt_path={cfg.ckpt_path}: copy it out of {folder} first"
        )
    for path in held:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    print(f"overwrite=true: removed the earlier run's {names} from {folder}")


class RunFolder(Callback):
    """`claim_folder` for a single run, before Hydra writes its .hydra/ into the folder (which
    would replace the config of the run there). A sweep's jobs have folders of their own; the
    job's `train` claims it. Hydra turns an exception in a callback into a warning, so a
    refusal ends the process itself, with the one line."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        cfg = config.copy()
        with open_dict(cfg):
            cfg.output_dir = config.hydra.run.dir  # not resolvable before the job starts
        try:
            claim_folder(cfg)
        except UserError as err:
            raise SystemExit(str(err)) from None  # printed to stderr; exit status 1
