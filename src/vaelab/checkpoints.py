"""Reading checkpoints safely: the model and the data of a trained run, and which file to read."""

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vaelab.data import ImageDataModule
from vaelab.errors import UserError, torch_load_refusal
from vaelab.module import VAEModule
from vaelab.parts import NESTED, Role, check_targets, resolve, targets

DATAMODULE = Role(("vaelab.data",), ImageDataModule, "vaelab.data.ImageDataModule")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at `path`, loaded with weights_only=True; a UserError if it cannot be."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"the checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as err:  # torch's message would advise weights_only=False
        code, reason = torch_load_refusal(err)
        if code:  # a pickle naming a function or class to call
            raise UserError(
                f"{path} is not a checkpoint of this project: it was refused because it holds "
                f"code (it calls {code}), which loading a checkpoint never runs"
            ) from None
        raise UserError(
            f"{path} is not a readable checkpoint: not a file torch.save wrote, or damaged "
            f"({reason})"
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
    # The rest of the optimizer's settings, the lr and the schedule may change on a resume
    # (VAEModule.follow_config_schedule); its state belongs to its class.
    trained = checkpoint.get("hyper_parameters", {}).get("optimizer", {}).get("_target_")
    asked = model.hparams.optimizer.get("_target_")
    if trained and asked != trained:
        raise UserError(
            f"{path} was trained with the optimizer {trained}, and this run asks for {asked}: "
            "its state (e.g. Adam's moments) does not carry over to another optimizer. Resume "
            "with the run's own model/optimizer, or start a new run."
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
    path: str | os.PathLike, device: str | torch.device = "cpu", trust: Sequence[str] = ()
) -> tuple[VAEModule, dict[str, Any]]:
    """A trained VAEModule for inference, and the checkpoint it came from, read once.

    Every `_target_` the file names, of the model and of the DataModule, is checked before
    anything is imported (`vaelab.parts.resolve`): only vaelab's parts and DataModules, torch's
    optimizers and schedulers, and classes of the modules in `trust` (e.g. ["my_priors"]) load.
    """
    checkpoint = read_checkpoint(path)
    check_targets(str(path), checkpoint.get("hyper_parameters", {}), trust)
    if datamodule_targets(checkpoint):
        datamodule_class(str(path), checkpoint, trust)
    try:
        model = VAEModule(**checkpoint["hyper_parameters"])
    except UserError:
        raise
    except (KeyError, TypeError, ValueError) as err:  # hyperparameters of another version
        raise UserError(
            f"{path} was not written by this version of vaelab's VAEModule ({err}); train it again"
        ) from None
    if difference := weights_difference(model, checkpoint["state_dict"]):
        raise UserError(
            f"{path} holds weights that do not fit its own hyperparameters ({difference}): "
            "the file was changed after training, or is damaged; train it again"
        )
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device), checkpoint


def weights_difference(model: VAEModule, state_dict: Any) -> str | None:
    """The first way in which `state_dict` does not fit `model`'s layers, or None."""
    if not isinstance(state_dict, dict) or not all(
        isinstance(t, torch.Tensor) for t in state_dict.values()
    ):
        return "its state_dict is not a dict of tensors"
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    theirs = {name: tuple(t.shape) for name, t in state_dict.items()}
    for name in sorted(ours.keys() | theirs.keys()):
        if name not in theirs:
            return f"{name} is missing"
        if name not in ours:
            return f"{name} is not a weight of that model"
        if ours[name] != theirs[name]:
            return f"{name} has shape {theirs[name]}, the model's {ours[name]}"
    return None


def datamodule_targets(checkpoint: dict[str, Any]) -> list[Any]:
    """The DataModule class that the checkpoint names: `datamodule_target`, which VAEModule
    saves; in older checkpoints, the only value of a dict saved under the class's name."""
    if "datamodule_target" in checkpoint:
        return [checkpoint["datamodule_target"]]
    return [
        value["_target_"]
        for value in checkpoint.values()
        if isinstance(value, dict) and set(value) == {"_target_"}
    ]


def datamodule_class(
    source: str, checkpoint: dict[str, Any], trust: Sequence[str] = ()
) -> type[ImageDataModule]:
    """The DataModule class that `checkpoint` (read from `source`) names, if loading may build
    it: vaelab's, or one of a module in `trust`; so too any `_target_` in its settings."""
    found = datamodule_targets(checkpoint)
    if len(found) != 1:
        raise UserError(f"{source} does not say which DataModule made it; train it again")
    cls = resolve(source, "data", found[0], DATAMODULE, trust)
    for name, nested in targets(checkpoint.get("datamodule_hyper_parameters", {}), "data."):
        resolve(source, name, nested, NESTED, trust)
    return cls


def load_datamodule(
    checkpoint: dict[str, Any],
    where: dict[str, str],
    trust: Sequence[str] = (),
    **settings: Any,
) -> ImageDataModule:
    """The DataModule of the run that wrote `checkpoint`, reading its data from `where`
    (data_dir or path, whichever it takes) and with `settings` replacing its own; its class
    is checked as `load_checkpoint` checks it. A UserError if the data does not fit the model.
    """
    cls = datamodule_class("the checkpoint", checkpoint, trust)
    hparams = checkpoint["datamodule_hyper_parameters"]
    where = {key: value for key, value in where.items() if key in hparams}
    data = cls(**{**hparams, **where, **settings})
    model = checkpoint["hyper_parameters"]
    named = f"data.path={where['path']}" if "path" in where else "the data"
    trained, given = tuple(model["image_shape"]), tuple(data.image_shape)
    if given != trained:
        raise UserError(
            f"{named} holds images of shape {given}, but the model was trained on {trained} "
            f"(channels, height, width): give it images of shape {trained}"
        )
    if model["conditional"] and data.num_classes != model["num_classes"]:
        raise UserError(
            f"{named} holds {data.num_classes} classes of labels, but this conditional model "
            f"was trained on {model['num_classes']}: give it data labelled as in training"
        )
    return data


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
