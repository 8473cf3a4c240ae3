"""The DataModules on tiny files: MNIST-format, image folders, CIFAR-10 and CelebA."""

import shutil
from pathlib import Path

import pytest
import torch

from vaelab import UserError
from vaelab.batches import InMemoryBatches
from vaelab.data import (
    CelebADataModule,
    CIFAR10DataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)
from vaelab.datasets import IDX_FILES

from ..conftest import TINY_TEST, TINY_TRAIN


def test_splits_and_pixels(tiny_mnist: Path) -> None:
    dm = MNISTDataModule(str(tiny_mnist), batch_size=32, val_size=64)
    dm.setup("fit")
    assert dm.train_images.shape == (TINY_TRAIN - 64, 1, 28, 28)
    assert dm.val_images.shape == (64, 1, 28, 28)
    assert dm.test_images.shape == (TINY_TEST, 1, 28, 28)
    assert dm.train_images.dtype == torch.float32
    assert dm.train_images.min() == 0 and dm.train_images.max() == 1
    # train and val are disjoint parts of the training file
    everything = torch.cat([dm.train_images, dm.val_images]).flatten(1)
    assert len(everything.unique(dim=0)) == TINY_TRAIN


def test_split_does_not_depend_on_the_seed(tiny_mnist: Path) -> None:
    first = MNISTDataModule(str(tiny_mnist), val_size=64, seed=1)
    second = MNISTDataModule(str(tiny_mnist), val_size=64, seed=2)
    first.setup("fit")
    second.setup("fit")
    assert torch.equal(first.val_images, second.val_images)


def images_of(batches: InMemoryBatches) -> torch.Tensor:
    """One epoch's images, in the order they were served."""
    return torch.cat([images for images, labels in batches])


def test_each_epoch_is_a_new_permutation_of_all_examples() -> None:
    data = torch.arange(100.0).view(100, 1)
    labels = torch.arange(100)
    batches = InMemoryBatches(data, labels, batch_size=32, shuffle=True, seed=0)
    assert len(batches) == 4
    epochs = [images_of(batches).flatten() for _ in range(2)]
    assert [len(images) for images, _ in batches] == [32, 32, 32, 4]
    for epoch in epochs:
        assert torch.equal(epoch.sort().values, data.flatten())
    assert not torch.equal(epochs[0], epochs[1])
    again = InMemoryBatches(data, labels, batch_size=32, shuffle=True, seed=0)
    assert torch.equal(images_of(again).flatten(), epochs[0])


def test_each_batch_is_images_and_their_labels() -> None:
    data = torch.arange(100.0).view(100, 1)
    labels = torch.arange(100) * 2
    for rank in (0, 1):
        batches = InMemoryBatches(data, labels, 32, True, seed=0, rank=rank, world_size=2)
        for images, batch_labels in batches:
            assert batch_labels.dtype == torch.int64
            assert torch.equal(batch_labels, images.flatten().long() * 2)


def test_evaluation_batches_keep_their_order() -> None:
    data = torch.arange(10.0).view(10, 1)
    batches = InMemoryBatches(data, torch.arange(10), 4, shuffle=False)
    assert torch.equal(images_of(batches), data)
    assert torch.equal(torch.cat([labels for images, labels in batches]), torch.arange(10))


def test_labels_must_match_the_images() -> None:
    with pytest.raises(ValueError, match=r"labels of shape \(9,\): give one per image, \(10,\)"):
        InMemoryBatches(torch.zeros(10, 1), torch.zeros(9, dtype=torch.int64), 4, False)


def test_missing_files_give_one_clear_message(tmp_path: Path) -> None:
    dm = MNISTDataModule(str(tmp_path))
    with pytest.raises(UserError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in IDX_FILES)
    assert "data.data_dir" in message and "VAELAB_DATA_DIR" in message


# Images read from files by a DataLoader: data=image_folder and data=celeba; and data=cifar10.


def folder_module(path: Path, **settings: object) -> ImageFolderDataModule:
    sizes = {"image_size": 8, "batch_size": 8, "eval_batch_size": 8, "val_size": 8}
    return ImageFolderDataModule(
        str(path), **{**sizes, "test_size": 8, "num_workers": 0, **settings}
    )


def epoch_of(loader: object) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def test_an_image_folder_without_classes(tiny_images: Path) -> None:
    """48 files, some in a sub-folder next to images: no classes; val and test held out."""
    dm = folder_module(tiny_images / "flat")
    assert dm.image_shape == (3, 8, 8) and dm.num_classes == 0  # known before setup
    dm.setup("fit")
    files = {split: dm.splits[split].files for split in ("train", "val", "test")}
    assert [len(files[split]) for split in files] == [32, 8, 8]
    everything = sorted(sum(files.values(), []))
    assert everything == sorted(p for p in (tiny_images / "flat").rglob("*") if p.is_file())
    images, labels = epoch_of(dm.train_dataloader())
    assert images.shape == (32, 3, 8, 8) and images.dtype == torch.float32
    assert torch.equal(images * 255, (images * 255).round())  # 8-bit values k / 255
    assert images.min() >= 0 and images.max() <= 1 and torch.equal(labels, torch.full((32,), -1))
    assert folder_module(tiny_images / "flat", channels=1, image_size=5).image_shape == (1, 5, 5)
    grey = folder_module(tiny_images / "flat", channels=1, image_size=5)
    grey.setup("test")
    assert next(iter(grey.test_dataloader()))[0].shape == (8, 1, 5, 5)  # 12 x 10 -> 5 x 5
    # the split held out does not depend on the seed
    assert folder_module(tiny_images / "flat", seed=3).splits["val"].files == files["val"]


def test_an_image_folder_with_a_class_per_sub_folder(tiny_images: Path) -> None:
    dm = folder_module(tiny_images / "classes", test_size=4, val_size=4)
    assert dm.num_classes == 2
    dm.setup("fit")
    for split in dm.splits.values():
        names = [["ant", "bee"][label] for label in split.labels]
        assert names == [path.parent.name for path in split.files]
    _, labels = epoch_of(dm.val_dataloader())
    assert set(labels.tolist()) <= {0, 1}


def test_an_image_folder_with_train_and_test_folders(tiny_images: Path) -> None:
    dm = folder_module(tiny_images / "split", val_size=4, test_size=999)  # test_size: unused
    assert dm.num_classes == 2
    test = dm.splits["test"]
    assert sorted(test.files) == sorted((tiny_images / "split" / "test").rglob("*.*"))
    assert [["ant", "bee"][y] for y in test.labels] == [p.parent.name for p in test.files]
    held_in = dm.splits["train"].files + dm.splits["val"].files
    assert sorted(held_in) == sorted((tiny_images / "split" / "train").rglob("*.*"))
    assert len(dm.splits["val"].files) == 4


def copy_images(tiny_images: Path, tmp_path: Path, folder: str) -> Path:
    return Path(shutil.copytree(tiny_images / folder, tmp_path / folder))


@pytest.mark.parametrize(
    "make, settings, message",
    [
        (lambda root: root / "nowhere", {}, "path='{p}' does not exist: give a folder"),
        (lambda root: root / "flat" / "00.png", {}, "path='{p}' is not a folder"),
        (lambda root: root / "empty", {}, "path: {p} holds no image files (.png, .jpg, .jpeg)"),
        (lambda root: root / "flat", {"image_size": 0}, "image_size=0 is invalid: use a positive"),
        (
            lambda root: root / "flat",
            {"val_size": 40},
            "val_size=40 is invalid: use 0 < val_size < 40",
        ),
        (
            lambda root: root / "flat",
            {"test_size": 48},
            "test_size=48 is invalid: use 0 < test_size < 48",
        ),
        (
            lambda root: root / "split",
            {"val_size": 20},
            "val_size=20 is invalid: use 0 < val_size < 20",
        ),
        (lambda root: root / "flat", {"num_workers": -1}, "num_workers=-1 is invalid"),
    ],
)
def test_bad_image_folder_settings_are_one_line(
    make: object, settings: dict, message: str, tiny_images: Path, tmp_path: Path
) -> None:
    (tiny_images / "empty").mkdir(exist_ok=True)
    path = make(tiny_images)
    with pytest.raises(UserError) as error:
        folder_module(path, **settings)
    assert message.format(p=path) in str(error.value) and "\n" not in str(error.value)


def test_image_folder_layout_mistakes_are_one_line(tiny_images: Path, tmp_path: Path) -> None:
    root = copy_images(tiny_images, tmp_path, "split")
    (root / "test" / "ant").rename(root / "test" / "cow")
    with pytest.raises(UserError, match=f"path: {root / 'test' / 'cow'} is a class that"):
        folder_module(root, val_size=4)
    shutil.move(root / "test" / "cow" / "00.png", root / "test" / "00.png")
    with pytest.raises(UserError, match="lie in class sub-folders and .* do not"):
        folder_module(root, val_size=4)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_file_that_cannot_be_read_is_named(
    workers: int, tiny_images: Path, tmp_path: Path
) -> None:
    root = copy_images(tiny_images, tmp_path, "flat")
    for path in root.rglob("*.*"):  # whichever split it lands in
        path.write_bytes(b"not an image")
        break
    dm = folder_module(root, num_workers=workers, batch_size=64)
    dm.setup("fit")
    with pytest.raises(UserError) as error:
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
            list(loader)
    assert str(error.value).startswith(f"{path} cannot be read as an image (")
    assert "\n" not in str(error.value)


def test_cifar10_from_its_batch_files(tiny_cifar10: Path) -> None:
    dm = CIFAR10DataModule(str(tiny_cifar10), batch_size=8, eval_batch_size=8, val_size=8)
    assert dm.image_shape == (3, 32, 32) and dm.num_classes == 10
    dm.setup("fit")
    assert dm.train_images.dtype == torch.uint8  # bytes in memory, floats per batch
    sizes = [len(dm.train_images), len(dm.val_images), len(dm.test_images)]
    assert sizes == [32, 8, 8]
    for loader in (dm.train_dataloader(), dm.test_dataloader()):
        images, labels = epoch_of(loader)
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32)
        assert torch.equal(images[:, 0, 0, 0] * 255, labels.float())  # the label's pixel
    with pytest.raises(UserError, match="CIFAR-10 was not found in .*test_batch"):
        CIFAR10DataModule(str(tiny_cifar10 / "nowhere")).setup("fit")


def test_celeba_from_its_partition_file(tiny_celeba: Path, tmp_path: Path) -> None:
    dm = CelebADataModule(str(tiny_celeba), image_size=8, batch_size=4, num_workers=0)
    assert dm.image_shape == (3, 8, 8) and dm.num_classes == 0
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    dm.setup("fit")
    assert dm.splits["test"].files[0].name == "000017.jpg"  # the first of partition 2
    images, labels = epoch_of(dm.val_dataloader())
    assert images.shape == (4, 3, 8, 8) and torch.equal(labels, torch.full((4,), -1))
    copy = Path(shutil.copytree(tiny_celeba / "celeba", tmp_path / "celeba"))
    (copy / "list_eval_partition.txt").unlink()
    for data_dir, missing in (
        (tmp_path, copy / "list_eval_partition.txt"),
        (copy, copy / "celeba"),
    ):
        with pytest.raises(UserError) as error:
            CelebADataModule(str(data_dir))
        message = str(error.value)
        assert message.startswith(f"data_dir: CelebA: {missing}") and "\n" not in message
        assert "<data_dir>/celeba/img_align_celeba/*.jpg" in message


def test_an_image_too_large_to_open_safely_is_named(
    tiny_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond twice PIL's MAX_IMAGE_PIXELS a file could be a decompression bomb: named in one
    line, not a traceback (here the limit is lowered so that the 12 x 10 images exceed it)."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    dm = folder_module(copy_images(tiny_images, tmp_path, "flat"), batch_size=64)
    dm.setup("fit")
    with pytest.raises(UserError, match=r"cannot be read as an image \(Image size \(120 pixels\)"):
        list(dm.train_dataloader())
