"""DataModules: image sets held in memory as one tensor per split, served as (images, labels)."""

from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from vaelab.batches import InMemoryBatches
from vaelab.datasets import (
    FASHION_MNIST,
    IDX_CLASSES,
    KMNIST,
    MNIST,
    IDXImageSet,
    load_image_file,
    split_off,
)
from vaelab.errors import UserError, require

BINARIZE = ("none", "dynamic")
# With binarize=dynamic, val and test are drawn once from these seeds: the same in every run.
VAL_BINARIZE_SEED, TEST_BINARIZE_SEED = 1, 2


class ImageDataModule(L.LightningDataModule):
    """Images as floats in [0, 1] with a validation split held out by a fixed seed.

    Subclasses set `image_shape` (C, H, W) and `num_classes` (0 without labels), available
    before `setup`, and implement `_read`. Batches are (images, labels) pairs; unlabelled
    images have the label -1.
    """

    image_shape: tuple[int, int, int]
    num_classes: int

    def __init__(
        self,
        batch_size: int,
        eval_batch_size: int,
        val_size: int,
        seed: int,
        binarize: str,
        split_size: int,
        split_name: str,
    ) -> None:
        """Args:
        seed: seeds the order of training batches.
        binarize: "none" keeps intensities; "dynamic" draws each pixel as Bernoulli(intensity),
            anew each time a training batch is drawn, and once with fixed seeds for val and test.
        split_size, split_name: how many images val is split from, and what they are.
        """
        super().__init__()
        require(batch_size >= 1, "batch_size", batch_size, "use a positive integer, e.g. 128")
        require(eval_batch_size >= 1, "eval_batch_size", eval_batch_size, "use a positive integer")
        accepted = f"use 0 < val_size < {split_size}, the size of {split_name}"
        require(0 < val_size < split_size, "val_size", val_size, accepted)
        require(binarize in BINARIZE, "binarize", binarize, f"use {' or '.join(BINARIZE)}")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.seed, self.binarize = val_size, seed, binarize == "dynamic"
        self.is_set_up = False
        self.shard: dict[str, int] = {}

    def _read(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """(images, labels) that val is split from, and (images, labels) of the test split."""
        raise NotImplementedError

    def _source(self) -> str:
        """Where the images that val is split from come from, for messages."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if self.is_set_up:  # Lightning calls setup for fit and again for test
            return
        (images, labels), (test_images, test_labels) = self._read()
        if self.val_size >= len(images):
            raise UserError(
                f"data.val_size={self.val_size} leaves no training images: "
                f"{self._source()} holds {len(images)}; use a smaller data.val_size"
            )
        # On a GPU the whole dataset lives in its memory: batches are sliced there, with no
        # copy from the host per step.
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        # Under DDP each process serves its shard of every split; metrics are summed over all.
        if trainer:
            self.shard = {"rank": trainer.global_rank, "world_size": trainer.world_size}
        val, train = split_off(len(images), self.val_size)
        self.train_images, self.train_labels = images[train].to(device), labels[train].to(device)
        self.val_images, self.val_labels = images[val].to(device), labels[val].to(device)
        self.test_images, self.test_labels = test_images.to(device), test_labels.to(device)
        if self.binarize:
            self.val_images = binarize_once(self.val_images, VAL_BINARIZE_SEED)
            self.test_images = binarize_once(self.test_images, TEST_BINARIZE_SEED)
        self.is_set_up = True

    def train_dataloader(self) -> InMemoryBatches:
        # trainer.overfit_batches=N trains on the first N batches: the same ones each epoch.
        overfit = self.trainer is not None and self.trainer.overfit_batches > 0
        return self._batches(
            self.train_images,
            self.train_labels,
            self.batch_size,
            shuffle=not overfit,
            seed=self.seed,
            binarize=self.binarize,
        )

    def val_dataloader(self) -> InMemoryBatches:
        return self._batches(self.val_images, self.val_labels, self.eval_batch_size)

    def test_dataloader(self) -> InMemoryBatches:
        return self._batches(self.test_images, self.test_labels, self.eval_batch_size)

    def state_dict(self) -> dict[str, str]:
        """Which DataModule this is, saved in checkpoints under the class's qualname."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}"}

    def load_state_dict(self, state_dict: dict[str, str]) -> None:
        """Nothing to restore: the data is rebuilt from the hyperparameters."""

    def _batches(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        binarize: bool = False,
    ) -> InMemoryBatches:
        """One split's batches, this process's shard of them."""
        return InMemoryBatches(images, labels, batch_size, shuffle, seed, binarize, **self.shard)


class IDXDataModule(ImageDataModule):
    """An MNIST-format set: val held out of its training files, its test files as test."""

    idx: IDXImageSet
    image_shape = (1, 28, 28)
    num_classes = IDX_CLASSES
    train_size = 60_000  # of each set's training files

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        seed: int = 0,
        binarize: str = "none",
    ) -> None:
        """Args:
        data_dir: the folder that holds `<folder>/raw/` in torchvision's layout.
        """
        training_set = f"{self.idx.name}'s training set"
        super().__init__(
            batch_size, eval_batch_size, val_size, seed, binarize, self.train_size, training_set
        )
        self.save_hyperparameters()
        self.raw_dir = self.idx.raw_dir(data_dir)

    def prepare_data(self) -> None:
        """Download the files with torchvision unless they are already there."""
        self.idx.download(self.hparams.data_dir)

    def _read(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        if missing := self.idx.missing(self.raw_dir):
            reason = f"missing: {', '.join(missing)}"
            raise UserError(self.idx.missing_message(self.raw_dir, reason))
        self.idx.verify(self.raw_dir)
        return self.idx.load(self.raw_dir, "train"), self.idx.load(self.raw_dir, "t10k")

    def _source(self) -> str:
        return str(self.raw_dir)


class MNISTDataModule(IDXDataModule):
    """MNIST digits: by default 55,000 train, 5,000 val and 10,000 test images."""

    idx = MNIST


class FashionMNISTDataModule(IDXDataModule):
    """Fashion-MNIST clothes: by default 55,000 train, 5,000 val and 10,000 test images."""

    idx = FASHION_MNIST


class KMNISTDataModule(IDXDataModule):
    """Kuzushiji-MNIST characters: by default 55,000 train, 5,000 val and 10,000 test images."""

    idx = KMNIST


class TensorDataModule(ImageDataModule):
    """A researcher's own square images from one .npz or .pt file; val and test held out of it.

    The file holds `images`, N x C x H x W or N x H x W, uint8 (0 to 255) or floating point
    (0 to 1), and optionally `labels`, N integers >= 0 (then num_classes is their max + 1).
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 1000,
        test_size: int = 1000,
        seed: int = 0,
        binarize: str = "none",
    ) -> None:
        self.file = Path(path).expanduser().resolve()
        try:
            images, labels = load_image_file(self.file)
        except UserError as err:
            raise UserError(f"path: {err}") from None
        n = len(images)
        accepted = f"use 0 < test_size < {n}, the number of images in {self.file}"
        require(0 < test_size < n, "test_size", test_size, accepted)
        held_in = f"{self.file} less its test_size={test_size} test images"
        super().__init__(
            batch_size, eval_batch_size, val_size, seed, binarize, n - test_size, held_in
        )
        channels, height, width = images.shape[1:]
        self.image_shape = (channels, height, width)
        self.num_classes = 0 if labels is None else int(labels.max()) + 1
        self.save_hyperparameters()
        labels = torch.full((n,), -1) if labels is None else labels
        test, rest = split_off(n, test_size)
        self._split_from, self._test = (images[rest], labels[rest]), (images[test], labels[test])

    def _read(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        return self._split_from, self._test

    def _source(self) -> str:
        return f"{self.file} less its test images"


def binarize_once(images: Tensor, seed: int) -> Tensor:
    """Each pixel drawn once as Bernoulli(its intensity), on the CPU so every device agrees."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(images.cpu(), generator=generator).to(images.device)
