"""MNIST held in memory as one float tensor per split, served as sliced batches."""

import math
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torchvision.datasets import MNIST

from vaelab import UserError

MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
SPLIT_SEED = 0  # the train/val split never changes with the run's seed, so val losses compare


class InMemoryBatches:
    """Batches sliced from one tensor, reshuffled each epoch from a seeded generator.

    It replaces a DataLoader because per-sample indexing, collation and transforms would
    cost more than the small network's forward and backward pass.
    """

    def __init__(self, data: Tensor, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        n, size = len(self.data), self.batch_size
        if not self.shuffle:
            return (self.data[i : i + size] for i in range(0, n, size))
        order = torch.randperm(n, generator=self.generator).to(self.data.device)
        return (self.data[order[i : i + size]] for i in range(0, n, size))


class MNISTDataModule(L.LightningDataModule):
    """MNIST pixels as floats in [0, 1]: 55,000 train, 5,000 val and 10,000 test images."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        seed: int = 0,
    ) -> None:
        """Args:
        data_dir: the folder holding `MNIST/raw/` in torchvision's layout.
        seed: seeds the order of training batches.
        """
        super().__init__()
        self.save_hyperparameters()
        self.raw_dir = Path(data_dir).expanduser().resolve() / "MNIST" / "raw"

    def prepare_data(self) -> None:
        """Download MNIST with torchvision unless it is already there."""
        if self._missing_files():
            try:
                for train in (True, False):
                    MNIST(self.hparams.data_dir, train=train, download=True)
            except Exception as err:  # no internet, a mirror down, a read-only folder...
                last_line = str(err).strip().splitlines()[-1]
                raise UserError(self._missing_message(f"download failed: {last_line}")) from None

    def setup(self, stage: str) -> None:
        if hasattr(self, "test_images"):  # Lightning calls setup for fit and again for test
            return
        if missing := self._missing_files():
            raise UserError(self._missing_message(f"missing: {', '.join(missing)}"))
        # On a GPU the whole dataset lives in its memory: batches are sliced there, with no
        # copy from the host per step.
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        images = _load_images(self.hparams.data_dir, train=True)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
        self.val_images = images[order[: self.hparams.val_size]].to(device)
        self.train_images = images[order[self.hparams.val_size :]].to(device)
        self.test_images = _load_images(self.hparams.data_dir, train=False).to(device)

    def train_dataloader(self) -> InMemoryBatches:
        return InMemoryBatches(
            self.train_images, self.hparams.batch_size, shuffle=True, seed=self.hparams.seed
        )

    def val_dataloader(self) -> InMemoryBatches:
        return InMemoryBatches(self.val_images, self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> InMemoryBatches:
        return InMemoryBatches(self.test_images, self.hparams.eval_batch_size, shuffle=False)

    def _missing_files(self) -> list[str]:
        return [name for name in MNIST_FILES if not (self.raw_dir / name).is_file()]

    def _missing_message(self, reason: str) -> str:
        return (
            f"MNIST was not found in {self.raw_dir} ({reason}).\n"
            f"That folder must hold the four uncompressed files {', '.join(MNIST_FILES)} "
            "(torchvision's layout). If you have a copy, point to the folder that contains "
            "MNIST/ with `data.data_dir=/path/to/data` or the environment variable "
            "VAELAB_DATA_DIR; with internet access, the files are downloaded there."
        )


def _load_images(data_dir: str, train: bool) -> Tensor:
    """All images of one MNIST file as floats in [0, 1]: (N, 1, 28, 28)."""
    pixels = MNIST(data_dir, train=train).data  # uint8 (N, 28, 28)
    return pixels.unsqueeze(1).float().div_(255)  # (N, 28, 28) -> (N, 1, 28, 28)
