"""How the Trainer writes checkpoints: each beside its file, then renamed into place."""

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint to `<path>.tmp-<pid>` in its own folder, flush it to the disk, then
    rename it over `path`: a kill at any instant leaves the old file or the new one, whole.

    Lightning's own (`TorchCheckpointIO`, through an fsspec transaction) writes the temporary
    file to $TMPDIR and moves it. Where $TMPDIR lies on another filesystem than the run, as
    /dev/shm or a cluster node's local disk does, the move is a copy into the emptied target:
    a kill during it leaves `last.ckpt` empty or cut short, and the temporary file behind.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"storage_options={storage_options!r}: local files take none")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # What a process killed while saving left behind; only one process saves into a folder.
        for stale in path.parent.glob("*.ckpt.tmp-*"):
            stale.unlink(missing_ok=True)
        temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)  # atomic within one filesystem
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
