"""Reading checkpoints safely: the model and the data of a trained run, and which file to read."""

import importlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vaelab import UserError
from vaelab.data import ImageDataModule
from vaelab.module import VAEModule


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at `path`, loaded with weights_only=True; a UserError if it cannot be."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"the checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as err:  # torch's message would advise weights_only=False
        reason = str(err).partition("WeightsUnpickler error:")[2].strip()
        detail = reason.partition("\n")[0].partition(". ")[0]  # without torch's advice
        if detail.startswith("Unsupported global"):  # a real pickle, holding more than data
            raise UserError(
                f"{path} is not a checkpoint of this project: it holds Python objects that "
                f"safe loading refuses ({detail})"
            ) from None
        why = f" ({detail})" if detail else ""
        raise UserError(
            f"{path} is not a readable checkpoint: not a file torch.save wrote, or damaged{why}"
        ) from None
    except Exception as err:  # truncated, corrupted, or some other kind of file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is not a readable checkpoint ({first_line})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{path} is not a Lightning checkpoint: it holds no state_dict")
    return checkpoint


def check_checkpoint(path: str | os.PathLike, model: VAEModule) -> None:
    """Raise a UserError naming the settings that differ unless `model` can load `path`."""
    checkpoint = read_checkpoint(path)
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    theirs = {name: tuple(t.shape) for name, t in checkpoint["state_dict"].items()}
    if ours != theirs:
        saved = flatten(checkpoint.get("hyper_parameters", {}))
        differences = [
            f"model.{key}={saved.get(key)!r} there, {value!r} here"
            for key, value in flatten(model.hparams).items()
            if saved.get(key) != value
        ]
        raise UserError(
            f"{path} holds a model of another shape ({'; '.join(differences) or 'other layers'}). "
            "Resume with the settings it was trained with, or start a new run."
        )


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one, with dotted keys: {"encoder": {"a": 1}} -> {"encoder.a": 1}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[VAEModule, dict[str, Any]]:
    """A trained VAEModule for inference, and the checkpoint it came from, read once."""
    checkpoint = read_checkpoint(path)
    try:
        model = VAEModule(**checkpoint["hyper_parameters"])
    except (KeyError, TypeError, ValueError) as err:  # hyperparameters of another version
        raise UserError(
            f"{path} was not written by this version of vaelab's VAEModule ({err}); train it again"
        ) from None
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device), checkpoint


def load_datamodule(
    checkpoint: dict[str, Any], where: dict[str, str], **settings: Any
) -> ImageDataModule:
    """The DataModule of the run that wrote `checkpoint`, reading its data from `where`
    (data_dir or path, whichever it takes) and with `settings` replacing its own."""
    targets = [
        value["_target_"]
        for value in checkpoint.values()
        if isinstance(value, dict) and set(value) == {"_target_"}
    ]  # what ImageDataModule.state_dict saved, under the DataModule's class name
    if len(targets) != 1:
        raise UserError("the checkpoint does not say which DataModule made it; train it again")
    module_name, _, class_name = targets[0].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    hparams = checkpoint["datamodule_hyper_parameters"]
    where = {key: value for key, value in where.items() if key in hparams}
    return cls(**{**hparams, **where, **settings})


def where_data(cfg: DictConfig) -> dict[str, str]:
    """Where a script's `data.data_dir` (or its old name `data_dir`) and `data.path` say the
    data lies; a path left null keeps the run's own."""
    where = {"data_dir": cfg.data_dir or cfg.data.data_dir}
    return where if cfg.data.path is None else {**where, "path": cfg.data.path}


def find_checkpoint(ckpt_path: str | None, run_dir: str | None) -> tuple[Path, Path]:
    """The checkpoint to study and the run folder that receives what is made of it.

    Args:
        ckpt_path: a checkpoint file; its run folder is the one holding its `checkpoints/`
            folder (the layout `train.py` writes), else the folder the file lies in.
        run_dir: a run folder; its checkpoint is the best by val/loss,
            `checkpoints/epoch*.ckpt`, not `last.ckpt`.
    Exactly one of the two is given.
    """
    if (ckpt_path is None) == (run_dir is None):
        raise UserError(
            f"give exactly one of ckpt_path=PATH (a .ckpt file) and run_dir=PATH (a run folder "
            f"such as outputs/2026-11-25/10-00-00); got {'both' if ckpt_path else 'neither'}"
        )
    if ckpt_path is not None:
        checkpoint = Path(ckpt_path)
        if not checkpoint.is_file():
            raise UserError(f"ckpt_path={ckpt_path}: there is no such file")
        folder = checkpoint.parent
        return checkpoint, folder.parent if folder.name == "checkpoints" else folder
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run_dir={run_dir}: there is no such folder")
    best = sorted((run / "checkpoints").glob("epoch*.ckpt"))
    if len(best) != 1:
        found = ", ".join(path.name for path in best) or "none"
        raise UserError(
            f"run_dir={run_dir} should hold one best checkpoint checkpoints/epoch*.ckpt, "
            f"but holds {found}; name the checkpoint with ckpt_path=PATH instead"
        )
    return best[0], run
