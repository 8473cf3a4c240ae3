"""(images, labels) batches whose order depends only on (seed, epoch), resumable mid-epoch:
sliced from tensors in memory, or read from files by a DataLoader; shuffled, binarized, sharded."""

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from vaelab.errors import UserError


def stream_seed(*keys: int) -> int:
    """An independent 63-bit seed for each tuple of keys, e.g. (seed, epoch)."""
    return int(np.random.SeedSequence(keys).generate_state(1, np.uint64)[0] >> 1)


def epoch_order(
    count: int,
    epoch: int,
    shuffle: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
) -> Tensor | None:
    """The examples of `rank`'s shard in epoch's order, (ceil(count / world_size),): a new
    permutation each epoch from (seed, epoch) with `shuffle`; None for all examples in their
    stored order (one process, no shuffle), which a caller may slice without indexing."""
    order = None
    if shuffle:
        generator = torch.Generator().manual_seed(stream_seed(seed, epoch))
        order = torch.randperm(count, generator=generator).to(device)
    if world_size > 1:
        shard_size = math.ceil(count / world_size)
        order = torch.arange(count, device=device) if order is None else order
        padded = torch.cat([order, order[: shard_size * world_size - count]])
        order = padded[rank::world_size]  # (shard_size,)
    return order


class EpochBatches:
    """Batches of `count` examples in epochs; with `shuffle`, a new order each epoch.

    The order of epoch e depends only on (seed, e), so `state_dict` is just where training
    stands: the epoch, and the batches of it yielded so far. Resuming is exact because
    Lightning fetches no batch ahead from a loader that has a length: when a checkpoint is
    saved, every batch yielded so far has been trained on. Subclasses yield the batches.
    """

    def __init__(
        self,
        count: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """Args:
        rank, world_size: under DDP, this process takes every world_size-th example of each
            epoch's order, from the rank-th on. As with torch's DistributedSampler, the order
            is padded with its first examples so that every process gets as many batches.
        """
        self.count, self.batch_size = count, batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.shard_size = math.ceil(count / world_size)
        self._next = (0, 0)  # (epoch, batch) where the next iteration starts
        self._epoch = self._yielded = 0
        self._exhausted = True

    def __len__(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, start = self._next
        self._next = (epoch + 1, 0)
        self._epoch, self._yielded, self._exhausted = epoch, start, False
        for i, batch in enumerate(self._epoch_batches(epoch, start), start):
            self._yielded = i + 1
            yield batch
        self._exhausted = True

    def _epoch_batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches start, start + 1, ... of the epoch."""
        raise NotImplementedError

    def order(self, epoch: int, device: torch.device | None = None) -> Tensor | None:
        """This process's examples in epoch's order, (shard_size,); None: all of them in
        their stored order, which a caller may slice without indexing."""
        return epoch_order(
            self.count, epoch, self.shuffle, self.seed, self.rank, self.world_size, device
        )

    def state_dict(self) -> dict[str, int]:
        """Where the next batch comes from; Lightning saves this in checkpoints."""
        epoch, batch = self._next if self._exhausted else (self._epoch, self._yielded)
        return {"epoch": epoch, "batch": batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._next = (state["epoch"], state["batch"])


class InMemoryBatches(EpochBatches):
    """(images, labels) batches sliced from two tensors.

    It replaces a DataLoader because per-sample indexing, collation and transforms would
    cost more than the small network's forward and backward pass. Images stored as uint8
    (0 to 255) are served as floats k / 255. With `binarize`, each batch of images is drawn
    as Bernoulli(pixel intensity) whenever it is yielded, from a seed of (seed, epoch, batch):
    new 0/1 images each epoch, and resumable.
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
        """
        if labels.shape != images.shape[:1]:
            n = len(images)
            raise ValueError(f"labels of shape {tuple(labels.shape)}: give one per image, ({n},)")
        super().__init__(len(images), batch_size, shuffle, seed, rank, world_size)
        self.images, self.labels = images, labels
        self.binarize = binarize

    def _epoch_batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        size = self.batch_size
        order = self.order(epoch, self.images.device)
        for i in range(start, len(self)):
            rows = slice(i * size, (i + 1) * size)
            rows = rows if order is None else order[rows]  # a slice is a view: no copy
            images = self.images[rows]
            if images.dtype == torch.uint8:  # e.g. CIFAR-10, kept in memory as bytes
                images = images.float().div_(255)
            images = self._binarized(images, epoch, i) if self.binarize else images
            yield images, self.labels[rows]

    def _binarized(self, images: Tensor, epoch: int, index: int) -> Tensor:
        """Each pixel drawn as Bernoulli(its intensity), seeded by (seed, epoch, index)."""
        # The final 1 keeps this stream apart from the order's (seed, epoch): SeedSequence
        # would read (seed, epoch, 0) as (seed, epoch), since it ignores trailing zeros.
        seed = stream_seed(self.seed, epoch, index, 1, self.rank)  # rank 0: trailing 0 ignored
        generator = torch.Generator(images.device).manual_seed(seed)
        return torch.bernoulli(images, generator=generator)


class BatchOrder(Sampler[list[int]]):
    """The example indices of each batch of one epoch of `EpochBatches`, from batch `start`
    on: a DataLoader's batch_sampler, iterated in the main process."""

    def __init__(self, batches: EpochBatches) -> None:
        # Copies, not the batches themselves: a reference cycle through the DataLoader would
        # leave its workers to the garbage collector, which then waits seconds for each.
        self.settings = (batches.count, batches.shuffle, batches.seed)
        self.shard = (batches.rank, batches.world_size)
        self.batch_size, self.batches = batches.batch_size, len(batches)
        self.epoch = self.start = 0

    def __len__(self) -> int:
        return self.batches - self.start

    def __iter__(self) -> Iterator[list[int]]:
        count, shuffle, seed = self.settings
        order = epoch_order(count, self.epoch, shuffle, seed, *self.shard)
        order = torch.arange(count) if order is None else order
        size = self.batch_size
        for i in range(self.start, self.batches):
            yield order[i * size : (i + 1) * size].tolist()


class LoaderBatches(EpochBatches):
    """(images, labels) batches read by a DataLoader from a Dataset of (image, label) pairs,
    for sets that do not fit in memory.

    The DataLoader's batch_sampler draws the epoch's order (`EpochBatches.order`); its
    workers may read batches ahead, but the state counts only the batches yielded here.
    With `binarize_seed`, each image is drawn as Bernoulli(its intensities) from a seed of
    (binarize_seed, its index): once and for all, as val and test are; with `binarize`,
    from (seed, epoch, its index), anew each epoch, as training batches are.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        binarize: bool = False,
        binarize_seed: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(len(dataset), batch_size, shuffle, seed, rank, world_size)
        self.binarize, self.binarize_seed = binarize, binarize_seed
        self.batch_order = BatchOrder(
            self
        )  # not `sampler`: Lightning would take it for a DataLoader
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.batch_order,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,  # not started anew each epoch
            # Each iteration draws the workers' base seed from this generator: from torch's
            # global one, it would shift the model's noise, and a resumed run's with it.
            generator=torch.Generator().manual_seed(seed),
        )

    def close(self) -> None:
        """Stop the DataLoader's worker processes now, not when the loader is collected."""
        iterator = self.loader._iterator  # where torch keeps persistent workers' iterator
        if shutdown := getattr(iterator, "_shutdown_workers", None):
            shutdown()
        self.loader._iterator = None

    def _epoch_batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        self.batch_order.epoch, self.batch_order.start = epoch, start
        indices = iter(self.batch_order)  # the same order the loader's own copy draws
        try:
            for images, labels in self.loader:
                if self.binarize or self.binarize_seed is not None:
                    keys = (self.binarize_seed,) if not self.binarize else (self.seed, epoch)
                    images = binarized(images, [(*keys, i, 1) for i in next(indices)])
                yield images, labels
        except UserError as err:  # from a worker, with its traceback: its last line only
            last = str(err).strip().splitlines()[-1]
            raise UserError(last.removeprefix(f"{UserError.__module__}.UserError: ")) from None


def binarized(images: Tensor, keys: Sequence[tuple[int, ...]]) -> Tensor:
    """Each image drawn as Bernoulli(its intensities) with a seed of its own keys."""
    drawn = torch.empty_like(images)
    for row, (image, key) in enumerate(zip(images, keys, strict=True)):
        generator = torch.Generator().manual_seed(stream_seed(*key))
        drawn[row] = torch.bernoulli(image, generator=generator)
    return drawn
