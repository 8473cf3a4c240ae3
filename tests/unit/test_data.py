"""The MNIST DataModule on tiny MNIST-format files."""

from pathlib import Path

import pytest
import torch

from vaelab import UserError
from vaelab.batches import InMemoryBatches
from vaelab.data import MNISTDataModule
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
