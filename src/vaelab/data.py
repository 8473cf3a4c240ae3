"""DataModules: image sets served as (images, labels) batches, held in memory as one tensor per
split where they fit (MNIST's, CIFAR-10, a tensor file), else read from files by a DataLoader."""

from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torchvision import datasets
from torchvision.datasets.utils import download_and_extract_archive

from vaelab.batches import InMemoryBatches, LoaderBatches
from vaelab.datasets import (
    CELEBA_FOLDER,
    CIFAR10_CLASSES,
    CIFAR10_FOLDER,
    CIFAR10_TEST,
    CIFAR10_TRAIN,
    FASHION_MNIST,
    IDX_CLASSES,
    KMNIST,
    MNIST,
    IDXImageSet,
    ImageFiles,
    celeba_splits,
    labelled_files,
    load_image_file,
    read_cifar_batch,
    resize_and_crop,
    split_off,
)
from vaelab.errors import UserError, require

BINARIZE = ("none", "dynamic")
# With binarize=dynamic, val and test are drawn once from these seeds: the same in every run.
VAL_BINARIZE_SEED, TEST_BINARIZE_SEED = 1, 2


class ImageDataModule(L.LightningDataModule):
    """Images as floats in [0, 1], served as (images, labels) batches; unlabelled images have
    the label -1. Held-out splits are drawn by a fixed seed, never the run's.

    Subclasses set `image_shape` (C, H, W) and `num_classes` (0 without labels), available
    before `setup`, and serve batches that resume where a checkpoint left training
    (`vaelab.batches.EpochBatches`).
    """

    image_shape: tuple[int, int, int]
    num_classes: int

    def __init__(self, batch_size: int, eval_batch_size: int, seed: int, binarize: str) -> None:
        """Args:
        seed: seeds the order of training batches.
        binarize: "none" keeps intensities; "dynamic" draws each pixel as Bernoulli(intensity),
            anew each time a training batch is drawn, and once with fixed seeds for val and test.
        """
        super().__init__()
        require(batch_size >= 1, "batch_size", batch_size, "use a positive integer, e.g. 128")
        require(eval_batch_size >= 1, "eval_batch_size", eval_batch_size, "use a positive integer")
        require(binarize in BINARIZE, "binarize", binarize, f"use {' or '.join(BINARIZE)}")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed, self.binarize = seed, binarize == "dynamic"
        self.shard: dict[str, int] = {}

    def _shard(self) -> None:
        """Under DDP each process serves its shard of every split; metrics are summed over all."""
        if self.trainer:
            self.shard = {"rank": self.trainer.global_rank, "world_size": self.trainer.world_size}

    def _overfit(self) -> bool:
        """trainer.overfit_batches=N trains on the first N batches: the same ones each epoch."""
        return self.trainer is not None and self.trainer.overfit_batches > 0


def check_val_size(val_size: int, split_size: int, split_name: str) -> None:
    """A UserError unless val_size leaves training images among split_size, split_name's."""
    accepted = f"use 0 < val_size < {split_size}, the size of {split_name}"
    require(0 < val_size < split_size, "val_size", val_size, accepted)


def hold_out_test(count: int, test_size: int, source: Path) -> tuple[Tensor, Tensor]:
    """The indices of test_size test images held out of `source`'s count by the fixed seed,
    and of the rest; a UserError unless some images are left."""
    accepted = f"use 0 < test_size < {count}, the number of images in {source}"
    require(0 < test_size < count, "test_size", test_size, accepted)
    return split_off(count, test_size)


class InMemoryDataModule(ImageDataModule):
    """Images held in memory as one tensor per split, with a validation split held out by a
    fixed seed: on a GPU the whole set lives in its memory, and batches are sliced there.

    Subclasses implement `_read`.
    """

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
        split_size, split_name: how many images val is split from, and what they are.
        """
        super().__init__(batch_size, eval_batch_size, seed, binarize)
        check_val_size(val_size, split_size, split_name)
        self.val_size = val_size
        self.is_set_up = False

    def _read(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """(images, labels) that val is split from, and (images, labels) of the test split;
        images as floats in [0, 1] or uint8 (0 to 255, made floats batch by batch)."""
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
        self._shard()
        val, train = split_off(len(images), self.val_size)
        self.train_images, self.train_labels = images[train].to(device), labels[train].to(device)
        self.val_images, self.val_labels = images[val].to(device), labels[val].to(device)
        self.test_images, self.test_labels = test_images.to(device), test_labels.to(device)
        if self.binarize:
            self.val_images = binarize_once(self.val_images, VAL_BINARIZE_SEED)
            self.test_images = binarize_once(self.test_images, TEST_BINARIZE_SEED)
        self.is_set_up = True

    def train_dataloader(self) -> InMemoryBatches:
        return self._batches(
            self.train_images,
            self.train_labels,
            self.batch_size,
            shuffle=not self._overfit(),
            seed=self.seed,
            binarize=self.binarize,
        )

    def val_dataloader(self) -> InMemoryBatches:
        return self._batches(self.val_images, self.val_labels, self.eval_batch_size)

    def test_dataloader(self) -> InMemoryBatches:
        return self._batches(self.test_images, self.test_labels, self.eval_batch_size)

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


class IDXDataModule(InMemoryDataModule):
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


class TensorDataModule(InMemoryDataModule):
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
        test, rest = hold_out_test(n, test_size, self.file)
        held_in = f"{self.file} less its test_size={test_size} test images"
        super().__init__(
            batch_size, eval_batch_size, val_size, seed, binarize, n - test_size, held_in
        )
        channels, height, width = images.shape[1:]
        self.image_shape = (channels, height, width)
        self.num_classes = 0 if labels is None else int(labels.max()) + 1
        self.save_hyperparameters()
        labels = torch.full((n,), -1) if labels is None else labels
        self._split_from, self._test = (images[rest], labels[rest]), (images[test], labels[test])

    def _read(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        return self._split_from, self._test

    def _source(self) -> str:
        return f"{self.file} less its test images"


class CIFAR10DataModule(InMemoryDataModule):
    """CIFAR-10's 32 x 32 colour photographs of 10 classes, held in memory as bytes: by
    default 45,000 train, 5,000 val and 10,000 test images."""

    image_shape = (3, 32, 32)
    num_classes = CIFAR10_CLASSES
    train_size = 50_000

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
        data_dir: the folder that holds `cifar-10-batches-py/` in torchvision's layout.
        """
        training_set = "CIFAR-10's training set"
        super().__init__(
            batch_size, eval_batch_size, val_size, seed, binarize, self.train_size, training_set
        )
        self.save_hyperparameters()
        self.folder = Path(data_dir).expanduser().resolve() / CIFAR10_FOLDER

    def prepare_data(self) -> None:
        """Download and unpack the archive with torchvision unless the files are there."""
        if missing := self._missing():
            try:
                cifar = datasets.CIFAR10
                parent = str(self.folder.parent)
                download_and_extract_archive(cifar.url, parent, None, cifar.filename, cifar.tgz_md5)
            except Exception as err:  # no internet, a mirror down, a read-only folder...
                last_line = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
                reason = f"download failed: {last_line}; missing: {', '.join(missing)}"
                raise UserError(self._missing_message(reason)) from None

    def _missing(self) -> list[str]:
        return [name for name in CIFAR10_TRAIN + CIFAR10_TEST if not (self.folder / name).is_file()]

    def _missing_message(self, reason: str) -> str:
        return (
            f"CIFAR-10 was not found in {self.folder} ({reason}). That folder must hold "
            f"{', '.join(CIFAR10_TRAIN + CIFAR10_TEST)} (torchvision's layout, "
            f"{CIFAR10_FOLDER}/). Point `data.data_dir` or VAELAB_DATA_DIR to the folder that "
            f"contains {CIFAR10_FOLDER}/; with internet access, the files are downloaded there."
        )

    def _read(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        if missing := self._missing():
            raise UserError(self._missing_message(f"missing: {', '.join(missing)}"))

        def read(names: list[str]) -> tuple[Tensor, Tensor]:
            pairs = [read_cifar_batch(self.folder / name) for name in names]
            images, labels = (torch.cat(parts) for parts in zip(*pairs, strict=True))
            return images, labels  # uint8 (N, 3, 32, 32), int64 (N,)

        return read(CIFAR10_TRAIN), read(CIFAR10_TEST)

    def _source(self) -> str:
        return str(self.folder)


class FileDataModule(ImageDataModule):
    """Images read from their files by a DataLoader as batches are drawn, for sets that do not
    fit in memory: `data.num_workers` processes read ahead of training.

    Subclasses set `splits`, an `ImageFiles` for each of "train", "val" and "test".
    """

    splits: dict[str, ImageFiles]

    def __init__(
        self, batch_size: int, eval_batch_size: int, seed: int, binarize: str, num_workers: int
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed, binarize)
        accepted = "use 0 (read in the training process) or more worker processes, e.g. 4"
        require(num_workers >= 0, "num_workers", num_workers, accepted)
        self.num_workers = num_workers
        self.loaders: list[LoaderBatches] = []  # those made, whose workers teardown stops

    def setup(self, stage: str) -> None:
        self._shard()

    def teardown(self, stage: str) -> None:
        """Stop the loaders' worker processes as fit, validate or test ends."""
        for loader in self.loaders:
            loader.close()
        self.loaders = []

    def train_dataloader(self) -> LoaderBatches:
        shuffle = not self._overfit()
        return self._batches("train", self.batch_size, shuffle, binarize=self.binarize)

    def val_dataloader(self) -> LoaderBatches:
        return self._batches("val", self.eval_batch_size, binarize_seed=VAL_BINARIZE_SEED)

    def test_dataloader(self) -> LoaderBatches:
        return self._batches("test", self.eval_batch_size, binarize_seed=TEST_BINARIZE_SEED)

    def _batches(
        self,
        split: str,
        batch_size: int,
        shuffle: bool = False,
        binarize: bool = False,
        binarize_seed: int | None = None,
    ) -> LoaderBatches:
        """One split's batches, this process's shard of them; pinned for a copy to a GPU."""
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        loader = LoaderBatches(
            self.splits[split],
            batch_size,
            shuffle,
            self.seed,
            binarize=binarize,
            binarize_seed=binarize_seed if self.binarize else None,
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
            **self.shard,
        )
        self.loaders.append(loader)
        return loader


class ImageFolderDataModule(FileDataModule):
    """A folder of PNG and JPEG images at any depth, resized and centre-cropped to squares.

    With `<path>/train` and `<path>/test`, those are the training and test images, and val
    is held out of train; else val and test are held out of all the images. Labels come from
    sub-folders (train/cat/*.png: the class "cat") when every image lies in one.
    """

    def __init__(
        self,
        path: str,
        image_size: int = 32,
        channels: int = 3,
        batch_size: int = 128,
        eval_batch_size: int = 500,
        val_size: int = 1000,
        test_size: int = 1000,
        seed: int = 0,
        binarize: str = "none",
        num_workers: int = 4,
    ) -> None:
        """Args:
        image_size: the images' height and width after resizing (the shorter side) and cropping.
        channels: 3 reads the images as RGB, 1 as grey (PIL's mode L).
        test_size: the test images held out, where `<path>` has no train/ and test/ folders.
        """
        super().__init__(batch_size, eval_batch_size, seed, binarize, num_workers)
        require(image_size >= 1, "image_size", image_size, "use a positive size in pixels, e.g. 32")
        require(channels in (1, 3), "channels", channels, "use 3 (RGB) or 1 (grey)")
        self.folder = Path(path).expanduser().resolve()
        if not self.folder.is_dir():
            problem = "is not a folder" if self.folder.exists() else "does not exist"
            raise UserError(f"path={path!r} {problem}: give a folder of PNG or JPEG images")
        try:
            (files, labels), test_files, test_labels, classes = self._list(val_size, test_size)
        except UserError as err:
            raise UserError(f"path: {err}") from None
        self.image_shape = (channels, image_size, image_size)
        self.num_classes = len(classes)
        self.save_hyperparameters()
        val, train = split_off(len(files), val_size)
        transform, mode = resize_and_crop(image_size), "RGB" if channels == 3 else "L"

        def images(paths: list[Path], of: list[int]) -> ImageFiles:
            return ImageFiles(paths, of, mode, transform)

        self.splits = {
            "train": images([files[i] for i in train], [labels[i] for i in train]),
            "val": images([files[i] for i in val], [labels[i] for i in val]),
            "test": images(test_files, test_labels),
        }

    def _list(
        self, val_size: int, test_size: int
    ) -> tuple[tuple[list[Path], list[int]], list[Path], list[int], list[str]]:
        """The files and labels that val is split from, the test files and labels, and the
        class names; the sizes checked against the counts."""
        train_dir, test_dir = self.folder / "train", self.folder / "test"
        if not (train_dir.is_dir() and test_dir.is_dir()):
            files, labels, classes = labelled_files(self.folder)
            n = len(files)
            test, rest = hold_out_test(n, test_size, self.folder)
            check_val_size(
                val_size, n - test_size, f"{self.folder} less its {test_size} test images"
            )
            held_in = ([files[i] for i in rest], [labels[i] for i in rest])
            return held_in, [files[i] for i in test], [labels[i] for i in test], classes
        files, labels, classes = labelled_files(train_dir)
        test_files, test_labels, test_classes = labelled_files(test_dir)
        if bool(classes) != bool(test_classes):
            labelled, flat = (train_dir, test_dir) if classes else (test_dir, train_dir)
            raise UserError(
                f"{labelled}'s images lie in class sub-folders and {flat}'s do not; put the "
                "images of both in sub-folders of the same names, or of neither"
            )
        if unknown := sorted(set(test_classes) - set(classes)):
            raise UserError(
                f"{test_dir / unknown[0]} is a class that {train_dir} does not have; the test "
                f"classes must be among the training ones: {', '.join(classes)}"
            )
        index = {name: i for i, name in enumerate(classes)}
        test_labels = [index[test_classes[label]] if classes else -1 for label in test_labels]
        check_val_size(val_size, len(files), f"the images of {train_dir}")
        return (files, labels), test_files, test_labels, classes


class CelebADataModule(FileDataModule):
    """CelebA's aligned faces, centre-cropped and resized, with their own train, val and test
    splits (162,770, 19,867 and 19,962 images); no labels."""

    num_classes = 0

    def __init__(
        self,
        data_dir: str = "data",
        image_size: int = 64,
        crop_size: int = 148,
        batch_size: int = 128,
        eval_batch_size: int = 500,
        seed: int = 0,
        binarize: str = "none",
        num_workers: int = 4,
    ) -> None:
        """Args:
        data_dir: the folder that holds `celeba/` in torchvision's layout.
        crop_size: the centre square kept of each 178 x 218 image before it is resized.
        """
        super().__init__(batch_size, eval_batch_size, seed, binarize, num_workers)
        require(image_size >= 1, "image_size", image_size, "use a positive size in pixels, e.g. 64")
        require(crop_size >= 1, "crop_size", crop_size, "use a positive size in pixels, e.g. 148")
        try:
            splits = celeba_splits(Path(data_dir).expanduser().resolve() / CELEBA_FOLDER)
        except UserError as err:
            raise UserError(f"data_dir: {err}") from None
        self.image_shape = (3, image_size, image_size)
        self.save_hyperparameters()
        transform = resize_and_crop(image_size, crop_size)
        self.splits = {
            split: ImageFiles(files, [-1] * len(files), "RGB", transform)
            for split, files in splits.items()
        }


def binarize_once(images: Tensor, seed: int) -> Tensor:
    """Each pixel drawn once as Bernoulli(its intensity), on the CPU so every device agrees;
    uint8 images (0 to 255) as intensities k / 255."""
    generator = torch.Generator().manual_seed(seed)
    intensities = images.cpu().float().div_(255) if images.dtype == torch.uint8 else images.cpu()
    return torch.bernoulli(intensities, generator=generator).to(images.device)
