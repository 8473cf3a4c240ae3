"""MNIST held in memory as one float tensor per split, served as sliced batches."""

import hashlib
import math
import struct
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import MNIST

from vaelab import UserError, require

MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
# The published checksums and sizes of the uncompressed originals.
MNIST_MD5 = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", 47_040_016),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", 60_008),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", 7_840_016),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", 10_008),
}
MNIST_TRAIN_SIZE = 60_000
SPLIT_SEED = 0  # the train/val split never changes with the run's seed, so val losses compare
BINARIZE = ("none", "dynamic")
# With binarize=dynamic, val and test are drawn once from these seeds: the same in every run.
VAL_BINARIZE_SEED, TEST_BINARIZE_SEED = 1, 2


def stream_seed(*keys: int) -> int:
    """An independent 63-bit seed for each tuple of keys, e.g. (seed, epoch)."""
    return int(np.random.SeedSequence(keys).generate_state(1, np.uint64)[0] >> 1)


class InMemoryBatches:
    """Batches sliced from one tensor; with `shuffle`, a new order each epoch from the seed.

    It replaces a DataLoader because per-sample indexing, collation and transforms would
    cost more than the small network's forward and backward pass. The order of epoch e
    depends only on (seed, e), so `state_dict` is just where training stands. With
    `binarize`, each batch is drawn as Bernoulli(pixel intensity) whenever it is yielded,
    from a seed of (seed, epoch, batch): new 0/1 images each epoch, and resumable.
    """

    def __init__(
        self, data: Tensor, batch_size: int, shuffle: bool, seed: int = 0, binarize: bool = False,
        rank: int = 0, world_size: int = 1, labels: Tensor | None = None,
    ) -> None:  # fmt: skip
        """Args:
        labels: if given, (N,) labels of the data, and batches are (images, labels) pairs.
        rank, world_size: under DDP, this process takes every world_size-th example of each
            epoch's order, from the rank-th on. As with torch's DistributedSampler, the order
            is padded with its first examples so that every process gets as many batches.
        """
        self.data = data
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.binarize = binarize
        self.rank, self.world_size = rank, world_size
        self.shard_size = math.ceil(len(data) / world_size)
        self._next = (0, 0)  # (epoch, batch) where the next iteration starts
        self._epoch = self._yielded = 0
        self._exhausted = True

    def __len__(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)

    def __iter__(self) -> Iterator[Tensor | tuple[Tensor, Tensor]]:
        epoch, start = self._next
        self._next = (epoch + 1, 0)
        self._epoch, self._yielded, self._exhausted = epoch, start, False
        size, n = self.batch_size, len(self.data)
        order = None  # None: the examples in their stored order, sliced without indexing
        if self.shuffle:
            generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch))
            order = torch.randperm(n, generator=generator).to(self.data.device)
        if self.world_size > 1:
            order = torch.arange(n, device=self.data.device) if order is None else order
            padded = torch.cat([order, order[: self.shard_size * self.world_size - n]])
            order = padded[self.rank :: self.world_size]  # (shard_size,)
        for i in range(start, len(self)):
            self._yielded = i + 1
            rows = slice(i * size, (i + 1) * size)
            rows = rows if order is None else order[rows]  # a slice is a view: no copy
            batch = self.data[rows]
            batch = self._binarized(batch, epoch, i) if self.binarize else batch
            yield batch if self.labels is None else (batch, self.labels[rows])
        self._exhausted = True

    def _binarized(self, batch: Tensor, epoch: int, index: int) -> Tensor:
        """Each pixel drawn as Bernoulli(its intensity), seeded by (seed, epoch, index)."""
        # The final 1 keeps this stream apart from the order's (seed, epoch): SeedSequence
        # would read (seed, epoch, 0) as (seed, epoch), since it ignores trailing zeros.
        seed = stream_seed(self.seed, epoch, index, 1, self.rank)  # rank 0: trailing 0 ignored
        return torch.bernoulli(batch, generator=torch.Generator(batch.device).manual_seed(seed))

    def state_dict(self) -> dict[str, int]:
        """Where the next batch comes from; Lightning saves this in checkpoints.

        Lightning fetches no batch ahead from a loader with a length, so every batch
        yielded so far has been trained on.
        """
        epoch, batch = self._next if self._exhausted else (self._epoch, self._yielded)
        return {"epoch": epoch, "batch": batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._next = (state["epoch"], state["batch"])


class MNISTDataModule(L.LightningDataModule):
    """MNIST pixels as floats in [0, 1]: 55,000 train, 5,000 val and 10,000 test images."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        seed: int = 0,
        binarize: str = "none",
    ) -> None:
        """Batches are images, or (images, labels) pairs if the model being fitted asks for
        labels (`needs_labels`); outside a Trainer, set `with_labels` before iterating.

        Args:
        data_dir: the folder holding `MNIST/raw/` in torchvision's layout.
        seed: seeds the order of training batches.
        binarize: "none" keeps intensities; "dynamic" draws each pixel as Bernoulli(intensity),
            anew each time a training batch is drawn, and once with fixed seeds for val and test.
        """
        super().__init__()
        require(batch_size >= 1, "batch_size", batch_size, "use a positive integer, e.g. 128")
        require(eval_batch_size >= 1, "eval_batch_size", eval_batch_size, "use a positive integer")
        require(
            0 < val_size < MNIST_TRAIN_SIZE, "val_size", val_size,
            f"use 0 < val_size < {MNIST_TRAIN_SIZE}, the size of MNIST's training set",
        )  # fmt: skip
        require(binarize in BINARIZE, "binarize", binarize, f"use {' or '.join(BINARIZE)}")
        self.save_hyperparameters()
        self.raw_dir = Path(data_dir).expanduser().resolve() / "MNIST" / "raw"
        self.with_labels = False

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
        trainer = self.trainer
        if trainer:
            self.with_labels = trainer.lightning_module.needs_labels
        if hasattr(self, "test_images"):  # Lightning calls setup for fit and again for test
            return
        if missing := self._missing_files():
            raise UserError(self._missing_message(f"missing: {', '.join(missing)}"))
        verify_files(self.raw_dir)
        # On a GPU the whole dataset lives in its memory: batches are sliced there, with no
        # copy from the host per step.
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        # Under DDP each process serves its shard of every split; metrics are summed over all.
        self.shard = (
            {"rank": trainer.global_rank, "world_size": trainer.world_size} if trainer else {}
        )
        images, labels = _load(self.hparams.data_dir, train=True)
        if self.hparams.val_size >= len(images):
            raise UserError(
                f"data.val_size={self.hparams.val_size} leaves no training images: "
                f"{self.raw_dir} holds {len(images)}; use a smaller data.val_size"
            )
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
        val, train = order[: self.hparams.val_size], order[self.hparams.val_size :]
        self.val_images, self.val_labels = images[val].to(device), labels[val].to(device)
        self.train_images, self.train_labels = images[train].to(device), labels[train].to(device)
        self.test_images, self.test_labels = (
            t.to(device) for t in _load(self.hparams.data_dir, train=False)
        )
        if self.hparams.binarize == "dynamic":
            self.val_images = binarize_once(self.val_images, VAL_BINARIZE_SEED)
            self.test_images = binarize_once(self.test_images, TEST_BINARIZE_SEED)

    def train_dataloader(self) -> InMemoryBatches:
        return self._batches(
            self.train_images, self.train_labels, self.hparams.batch_size, shuffle=True,
            seed=self.hparams.seed, binarize=self.hparams.binarize == "dynamic",
        )  # fmt: skip

    def val_dataloader(self) -> InMemoryBatches:
        return self._batches(self.val_images, self.val_labels, self.hparams.eval_batch_size)

    def test_dataloader(self) -> InMemoryBatches:
        return self._batches(self.test_images, self.test_labels, self.hparams.eval_batch_size)

    def _batches(
        self, images: Tensor, labels: Tensor, batch_size: int, shuffle: bool = False,
        seed: int = 0, binarize: bool = False,
    ) -> InMemoryBatches:  # fmt: skip
        """One split's batches: this process's shard, with labels if the model asks."""
        return InMemoryBatches(
            images, batch_size, shuffle, seed, binarize, **self.shard,
            labels=labels if self.with_labels else None,
        )  # fmt: skip

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


def _load(data_dir: str, train: bool) -> tuple[Tensor, Tensor]:
    """The images of one MNIST split as floats in [0, 1], (N, 1, 28, 28), and their labels (N,)."""
    split = MNIST(data_dir, train=train)  # uint8 (N, 28, 28), int64 (N,)
    return split.data.unsqueeze(1).float().div_(255), split.targets  # -> (N, 1, 28, 28), (N,)


def binarize_once(images: Tensor, seed: int) -> Tensor:
    """Each pixel drawn once as Bernoulli(its intensity), on the CPU so every device agrees."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(images.cpu(), generator=generator).to(images.device)


def verify_files(raw_dir: Path) -> None:
    """Check each file's IDX header against its size, and real MNIST files against their MD5.

    A folder is taken for real MNIST when any file has a real MNIST file's size; then all
    four must match their checksums. Other folders (small IDX sets, such as the tests')
    get the header checks only.
    """
    sizes = {name: (raw_dir / name).stat().st_size for name in MNIST_FILES}
    real = any(sizes[name] == MNIST_MD5[name][1] for name in MNIST_FILES)
    counts = {}
    for name in MNIST_FILES:
        path = raw_dir / name
        with open(path, "rb") as file:
            head = file.read(4)
            ndim = head[3] if len(head) == 4 else 0
            dims = struct.unpack(f">{ndim}I", file.read(4 * ndim).ljust(4 * ndim, b"\0"))
        expected_ndim = 3 if "images" in name else 1
        if head[:3] != b"\0\0\x08" or ndim != expected_ndim or dims[1:] not in ((), (28, 28)):
            _bad_file(path, "its header is not that of an MNIST file of this name")
        if sizes[name] != 4 + 4 * ndim + math.prod(dims):
            promised = 4 + 4 * ndim + math.prod(dims)
            _bad_file(path, f"it has {sizes[name]} bytes where its header promises {promised}")
        if real and (md5 := hashlib.md5(path.read_bytes()).hexdigest()) != MNIST_MD5[name][0]:
            _bad_file(path, f"its MD5 is {md5}, not MNIST's {MNIST_MD5[name][0]}")
        counts[name] = dims[0]
    for prefix in ("train", "t10k"):
        if counts[f"{prefix}-images-idx3-ubyte"] != counts[f"{prefix}-labels-idx1-ubyte"]:
            _bad_file(raw_dir / f"{prefix}-labels-idx1-ubyte", "its count differs from the images'")


def _bad_file(path: Path, why: str) -> None:
    raise UserError(
        f"{path} is damaged or not the right file: {why}. Delete it so that it is "
        "downloaded again, or point data.data_dir to a good copy of MNIST."
    )
