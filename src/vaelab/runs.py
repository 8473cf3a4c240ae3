"""Run folders on the command line: quoting their paths, and finding a trained run's checkpoint."""

from pathlib import Path

from vaelab import UserError


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


# The overrides of the entry points whose values are paths.
PATH_KEYS = (
    "ckpt_path",
    "run_dir",
    "data_dir",
    "data.data_dir",
    "hydra.run.dir",
    "hydra.sweep.dir",
)


def quote_paths(args: list[str]) -> list[str]:
    """Command-line arguments with path values quoted: run_dir=a/0_b=1 -> run_dir='a/0_b=1'.

    Sweep folders are named after their overrides (`0_model.latent_size=2,model.beta=4`), and
    Hydra's override grammar takes no `=`, `,` or brackets in an unquoted value: without
    this, such a folder could not be named on the command line unless the user quoted it.
    """
    quoted = []
    for arg in args:
        key, sep, value = arg.partition("=")
        plain = value not in ("", "null") and value[0] not in "'\"" and "'" not in value
        quoted.append(f"{key}='{value}'" if sep and key in PATH_KEYS and plain else arg)
    return quoted
