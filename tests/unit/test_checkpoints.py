"""vaelab.checkpoints: read_checkpoint, the one reader of checkpoint files, refusing what it
cannot read or must not run, in one line; and the DataModule class a checkpoint names."""

import os
from pathlib import Path

import pytest
import torch

from vaelab.checkpoints import datamodule_class, read_checkpoint
from vaelab.data import ImageFolderDataModule, MNISTDataModule
from vaelab.errors import UserError


class Planted:
    def __reduce__(self) -> tuple:
        return os.system, ("echo pwned",)


def test_reads_a_lightning_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 7}, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint["global_step"] == 7 and torch.equal(
        checkpoint["state_dict"]["w"], torch.ones(2)
    )


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"the checkpoint {tmp_path / 'no.ckpt'} does not exist"):
        read_checkpoint(tmp_path / "no.ckpt")


def test_a_pickle_that_calls_code_is_refused_unrun(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": Planted()}, path)  # as a checkpoint someone sent would be
    with pytest.raises(UserError, match=r"refused because it holds code \(it calls posix.system\)"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "is not a readable checkpoint"),
        (b"not a checkpoint at all", "is not a readable checkpoint"),
    ],
)
def test_what_is_not_a_checkpoint_is_one_line(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=reason) as caught:
        read_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_a_truncated_checkpoint_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match=f"{path} is not a readable checkpoint") as caught:
        read_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_a_tensor_file_without_state_dict_is_not_a_lightning_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(UserError, match="is not a Lightning checkpoint: it holds no state_dict"):
        read_checkpoint(path)


def test_the_datamodule_class_is_read_from_its_key_or_an_older_checkpoints_entry() -> None:
    new = {"datamodule_target": "vaelab.data.ImageFolderDataModule"}
    old = {"MNISTDataModule": {"_target_": "vaelab.data.MNISTDataModule"}}  # before the key
    assert datamodule_class("new.ckpt", new) is ImageFolderDataModule
    assert datamodule_class("old.ckpt", old) is MNISTDataModule
    with pytest.raises(UserError, match="new.ckpt names data._target_='os.system', which loading"):
        datamodule_class("new.ckpt", {"datamodule_target": "os.system"})
    with pytest.raises(UserError, match="does not say which DataModule made it"):
        datamodule_class("none.ckpt", {})
