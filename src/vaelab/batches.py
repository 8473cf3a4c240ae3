"""(images, labels) batches sliced from tensors in memory: shuffled, binarized, sharded."""

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor


def stream_seed(*keys: int) -> int:
    """An independent 63-bit seed for each tuple of keys, e.g. (seed, epoch)."""
    return int(np.random.SeedSequence(keys).generate_state(1, np.uint64)[0] >> 1)


class InMemoryBatches:
    """(images, labels) batches sliced from two tensors; with `shuffle`, a new order each epoch.

    It replaces a DataLoader because per-sample indexing, collation and transforms would
    cost more than the small network's forward and backward pass. The order of epoch e
    depends only on (seed, e), so `state_dict` is just where training stands. With
    `binarize`, each batch of images is drawn as Bernoulli(pixel intensity) whenever it is
    yielded, from a seed of (seed, epoch, batch): new 0/1 images each epoch, and resumable.

    Resuming is exact because Lightning fetches no batch ahead from a loader that has a
    length: when a checkpoint is saved, every batch yielded so far has been trained on.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        binarize: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """Args:
        labels: (N,) int64, one per image (-1 for unlabelled images).
        rank, world_size: under DDP, this process takes every world_size-th example of each
            epoch's order, from the rank-th on. As with torch's DistributedSampler, the order
            is padded with its first examples so that every process gets as many batches.
        """
        if labels.shape != images.shape[:1]:
            n = len(images)
            raise ValueError(f"labels of shape {tuple(labels.shape)}: give one per image, ({n},)")
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.binarize = binarize
        self.rank, self.world_size = rank, world_size
        self.shard_size = math.ceil(len(images) / world_size)
        self._next = (0, 0)  # (epoch, batch) where the next iteration starts
        self._epoch = self._yielded = 0
        self._exhausted = True

    def __len__(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, start = self._next
        self._next = (epoch + 1, 0)
        self._epoch, self._yielded, self._exhausted = epoch, start, False
        size, n, device = self.batch_size, len(self.images), self.images.device
        order = None  # None: the examples in their stored order, sliced without indexing
        if self.shuffle:
            generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch))
            order = torch.randperm(n, generator=generator).to(device)
        if self.world_size > 1:
            order = torch.arange(n, device=device) if order is None else order
            padded = torch.cat([order, order[: self.shard_size * self.world_size - n]])
            order = padded[self.rank :: self.world_size]  # (shard_size,)
        for i in range(start, len(self)):
            self._yielded = i + 1
            rows = slice(i * size, (i + 1) * size)
            rows = rows if order is None else order[rows]  # a slice is a view: no copy
            images = self.images[rows]
            images = self._binarized(images, epoch, i) if self.binarize else images
            yield images, self.labels[rows]
        self._exhausted = True

    def _binarized(self, images: Tensor, epoch: int, index: int) -> Tensor:
        """Each pixel drawn as Bernoulli(its intensity), seeded by (seed, epoch, index)."""
        # The final 1 keeps this stream apart from the order's (seed, epoch): SeedSequence
        # would read (seed, epoch, 0) as (seed, epoch), since it ignores trailing zeros.
        seed = stream_seed(self.seed, epoch, index, 1, self.rank)  # rank 0: trailing 0 ignored
        generator = torch.Generator(images.device).manual_seed(seed)
        return torch.bernoulli(images, generator=generator)

    def state_dict(self) -> dict[str, int]:
        """Where the next batch comes from; Lightning saves this in checkpoints."""
        epoch, batch = self._next if self._exhausted else (self._epoch, self._yielded)
        return {"epoch": epoch, "batch": batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._next = (state["epoch"], state["batch"])
