"""Image sets read from files: MNIST-format folders, one .npz or .pt file and CIFAR-10's
batches into tensors; folders of PNG and JPEG files (and CelebA's) image by image."""

import codecs
import gzip
import hashlib
import io
import math
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from vaelab.errors import UserError, torch_load_refusal

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# The sizes of the uncompressed files: 60,000 and 10,000 28 x 28 images in each of the three sets.
IDX_SIZES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}

IDX_CLASSES = 10  # MNIST, Fashion-MNIST and KMNIST each have ten, labelled 0 to 9


SPLIT_SEED = 0  # held-out splits never change with the run's seed, so val losses compare


def split_off(count: int, size: int) -> tuple[Tensor, Tensor]:
    """The indices of `size` images held out of `count` by a fixed seed, and of the rest."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[:size], order[size:]


@dataclass(frozen=True)
class IDXImageSet:
    """An image set in MNIST's IDX format and torchvision's layout, <data_dir>/<folder>/raw/."""

    name: str  # as messages write it
    folder: str
    downloader: type[datasets.MNIST]  # the torchvision class that downloads the files
    # The published MD5 sums, by file name: of the uncompressed files where they are
    # published, else of the .gz files that torchvision downloads and keeps beside them.
    md5: Mapping[str, str]

    def raw_dir(self, data_dir: str) -> Path:
        return Path(data_dir).expanduser().resolve() / self.folder / "raw"

    def missing(self, raw_dir: Path) -> list[str]:
        """The names of the four files that raw_dir lacks."""
        return [name for name in IDX_FILES if not (raw_dir / name).is_file()]

    def missing_message(self, raw_dir: Path, reason: str) -> str:
        return (
            f"{self.name} was not found in {raw_dir} ({reason}).\n"
            f"That folder must hold the four uncompressed files {', '.join(IDX_FILES)} "
            "(torchvision's layout). If you have a copy, point to the folder that contains "
            f"{self.folder}/ with `data.data_dir=/path/to/data` or the environment variable "
            "VAELAB_DATA_DIR; with internet access, the files are downloaded there."
        )

    def download(self, data_dir: str) -> None:
        """Download the files with torchvision into data_dir unless they are there."""
        raw_dir = self.raw_dir(data_dir)
        if missing := self.missing(raw_dir):
            try:
                for train in (True, False):
                    self.downloader(data_dir, train=train, download=True)
            except Exception as err:  # no internet, a mirror down, a read-only folder...
                last_line = str(err).strip().splitlines()[-1]
                reason = f"download failed: {last_line}; missing: {', '.join(missing)}"
                raise UserError(self.missing_message(raw_dir, reason)) from None

    def verify(self, raw_dir: Path) -> None:
        """Check each file's IDX header against its size, and real files against their MD5.

        The folder is taken for the real set when any file has a real file's size; then each
        file must match its published checksum, or, where only the .gz files' are published,
        the .gz beside it must (when there is one). Other folders (small IDX sets, such as
        the tests') get the header checks only.
        """
        sizes = {name: (raw_dir / name).stat().st_size for name in IDX_FILES}
        real = any(sizes[name] == IDX_SIZES[name] for name in IDX_FILES)
        counts = {}
        for name in IDX_FILES:
            path = raw_dir / name
            with open(path, "rb") as file:
                head = file.read(4)
                ndim = head[3] if len(head) == 4 else 0
                dims = struct.unpack(f">{ndim}I", file.read(4 * ndim).ljust(4 * ndim, b"\0"))
            expected_ndim = 3 if "images" in name else 1
            if head[:3] != b"\0\0\x08" or ndim != expected_ndim or dims[1:] not in ((), (28, 28)):
                self._bad_file(path, "its header is not that of an MNIST-format file of this name")
            if sizes[name] != (promised := 4 + 4 * ndim + math.prod(dims)):
                self._bad_file(
                    path, f"it has {sizes[name]} bytes where its header promises {promised}"
                )
            if real:
                self._check_md5(path)
            counts[name] = dims[0]
        for prefix in ("train", "t10k"):
            if counts[f"{prefix}-images-idx3-ubyte"] != counts[f"{prefix}-labels-idx1-ubyte"]:
                labels = raw_dir / f"{prefix}-labels-idx1-ubyte"
                self._bad_file(labels, "its count differs from the images'")

    def load(self, raw_dir: Path, split: Literal["train", "t10k"]) -> tuple[Tensor, Tensor]:
        """A verified split's images as floats in [0, 1], (N, 1, 28, 28), and labels, int64 (N,)."""
        images = _read_idx(raw_dir / f"{split}-images-idx3-ubyte")  # uint8 (N, 28, 28)
        labels = _read_idx(raw_dir / f"{split}-labels-idx1-ubyte")  # uint8 (N,)
        if (bad := labels >= IDX_CLASSES).any():
            path, label = raw_dir / f"{split}-labels-idx1-ubyte", labels[bad][0].item()
            why = f"it holds the label {label}, where {self.name}'s are 0 to {IDX_CLASSES - 1}"
            self._bad_file(path, why)
        return images.unsqueeze(1).float().div_(255), labels.long()  # -> (N, 1, 28, 28), (N,)

    def _check_md5(self, path: Path) -> None:
        name, gz = path.name, path.with_name(path.name + ".gz")
        if name in self.md5:
            if (md5 := _md5(path.read_bytes())) != self.md5[name]:
                self._bad_file(path, f"its MD5 is {md5}, not {self.name}'s {self.md5[name]}")
        elif gz.is_file():
            # Only the .gz files' checksums are published: the .gz beside this file must
            # match its own, and this file must be what the .gz unpacks to. Without the
            # .gz, the headers are all that is checked.
            packed = gz.read_bytes()
            if (md5 := _md5(packed)) != self.md5[gz.name]:
                fix = f"Delete it and {path} so that they are downloaded again"
                self._bad_file(gz, f"its MD5 is {md5}, not {self.name}'s {self.md5[gz.name]}", fix)
            if gzip.decompress(packed) != path.read_bytes():
                self._bad_file(path, f"it is not what {gz.name} beside it unpacks to")

    def _bad_file(
        self, path: Path, why: str, fix: str = "Delete it so that it is downloaded again"
    ) -> None:
        raise UserError(
            f"{path} is damaged or not the right file: {why}. {fix}, or point data.data_dir "
            f"to a good copy of {self.name}."
        )


MNIST = IDXImageSet(
    "MNIST",
    "MNIST",
    datasets.MNIST,
    # The published checksums of the uncompressed originals.
    {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
)
FASHION_MNIST = IDXImageSet(
    "Fashion-MNIST",
    "FashionMNIST",
    datasets.FashionMNIST,
    # Of the .gz files, as github.com/zalandoresearch/fashion-mnist (README) and
    # torchvision's FashionMNIST.resources publish them; no sums of the unpacked files are.
    {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
)
KMNIST = IDXImageSet(
    "KMNIST",
    "KMNIST",
    datasets.KMNIST,
    # Of the .gz files, as torchvision's KMNIST.resources lists them; github.com/rois-codh/
    # kmnist publishes no checksums.
    {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    },
)


def _read_idx(path: Path) -> Tensor:
    """The uint8 array of an IDX file whose header has been checked."""
    data = bytearray(path.read_bytes())  # writable, so torch can share it without a copy
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.frombuffer(data, dtype=torch.uint8, offset=4 + 4 * ndim).view(dims)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


IMAGE_FILE = (
    "a .npz or .pt file holding `images`, N x C x H x W or N x H x W, uint8 (0 to 255) or "
    "floating point (0 to 1), and optionally `labels`, N integers >= 0"
)
SAVE_NPZ = "save one with numpy.savez(path, images=..., labels=...)"
SAVE_PT = "save one with torch.save({'images': ..., 'labels': ...}, path)"
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
MAX_CHANNELS = 4  # RGBA: more than the image grids that training logs can draw


def load_image_file(path: Path) -> tuple[Tensor, Tensor | None]:
    """The images of `IMAGE_FILE` as floats in [0, 1], (N, C, H, W), and its labels, int64
    (N,), or None if it has none. A UserError names the file and what is wrong with it."""
    arrays = _read_arrays(path)
    if "images" not in arrays:
        keys = ", ".join(arrays) or "none"
        raise UserError(f"{path} has no `images` (its keys: {keys}); store them as `images`")
    if extra := sorted(set(arrays) - {"images", "labels"}):
        raise UserError(f"{path} has keys other than `images` and `labels`: {', '.join(extra)}")
    images, labels = arrays["images"], arrays.get("labels")
    shape = tuple(images.shape)
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise UserError(
            f"{path} has images of dtype {images.dtype}; use uint8 (0 to 255) or floating "
            "point (0 to 1)"
        )
    if images.ndim not in (3, 4):
        raise UserError(f"{path} has images of shape {shape}; use N x C x H x W or N x H x W")
    if images.numel() == 0:
        raise UserError(f"{path} holds no images (their shape: {shape})")
    if images.shape[-1] != images.shape[-2]:
        height, width = shape[-2:]
        raise UserError(f"{path} has images of {height} x {width} pixels; use square ones")
    if (channels := shape[1] if images.ndim == 4 else 1) > MAX_CHANNELS:
        raise UserError(
            f"{path} has images of {channels} channels (shape {shape}); use N x C x H x W with "
            "C from 1 to 4 (grey, grey and alpha, RGB, RGBA), which the image grids can show"
        )
    if images.dtype.is_floating_point and not (inside := (images >= 0) & (images <= 1)).all():
        example = images[~inside][0].item()
        raise UserError(
            f"{path} has floating-point images with values outside [0, 1], e.g. {example}; "
            "scale them to [0, 1], or store uint8 (0 to 255)"
        )
    images = images.reshape(len(images), -1, *shape[-2:])  # (N, H, W) -> (N, 1, H, W)
    images = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    if labels is None:
        return images, None
    n = len(images)
    if tuple(labels.shape) != (n,):
        raise UserError(
            f"{path} has labels of shape {tuple(labels.shape)} for {n} images; use one label "
            f"per image, shape ({n},)"
        )
    if labels.dtype not in INTEGER_DTYPES:
        raise UserError(f"{path} has labels of dtype {labels.dtype}; use integers >= 0")
    labels = labels.long()
    if (labels < 0).any():
        raise UserError(
            f"{path} has labels below 0, e.g. {labels.min().item()}; use class indices >= 0"
        )
    # Labels are class indices, 0 to K - 1: K, their max + 1, can be no more than the images.
    if (top := labels.max().item()) >= n:
        raise UserError(
            f"{path} has the label {top}, which would make {top + 1} classes for its {n} "
            "images; use class indices 0 to K - 1, e.g. numpy.unique(labels, "
            "return_inverse=True)[1]"
        )
    return images, labels


def _read_arrays(path: Path) -> dict[str, Tensor]:
    """The named arrays of a .npz or .pt file, as tensors."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; give the path of {IMAGE_FILE}")
    if path.suffix == ".npz":
        try:
            content = np.load(path, allow_pickle=False)
            if not isinstance(content, np.lib.npyio.NpzFile):  # a .npy file: one array
                raise ValueError(f"it holds one {type(content).__name__}, not named arrays")
            with content:
                return {key: torch.from_numpy(content[key]) for key in content.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise UserError(f"{path} is not a readable .npz file ({err}); {SAVE_NPZ}") from None
    if path.suffix == ".pt":
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # damaged, not written by torch.save, or holding objects
            code, reason = torch_load_refusal(err)
            if code:
                problem = f"holds objects other than tensors (it calls {code})"
            else:
                problem = f"is not a readable .pt file ({reason})"
            raise UserError(f"{path} {problem}; {SAVE_PT}") from None
        if not isinstance(content, dict) or not all(
            isinstance(key, str) and isinstance(value, Tensor) for key, value in content.items()
        ):
            raise UserError(f"{path} holds no dict of tensors; {SAVE_PT}")
        for key, value in content.items():  # torch.save keeps sparse and meta tensors as such
            if value.layout != torch.strided or value.is_meta:
                kind = "meta" if value.is_meta else str(value.layout).removeprefix("torch.")
                raise UserError(
                    f"{path} holds `{key}` as a {kind} tensor; save a dense one with its values, "
                    f"e.g. {key}.to_dense() on the CPU"
                )
        return content
    raise UserError(f"{path} is neither a .npz nor a .pt file; give the path of {IMAGE_FILE}")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # as file names end, in any case


def image_files(folder: Path) -> list[Path]:
    """The PNG and JPEG files under `folder`, at any depth, sorted by path."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )


def labelled_files(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """The image files under `folder`, their labels and the class names: one class per
    sub-folder (names sorted) when every image lies in a sub-folder, else no classes and the
    label -1 for every image. A UserError if there is no image."""
    files = image_files(folder)
    if not files:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise UserError(f"{folder} holds no image files ({suffixes}); give a folder of images")
    tops = [path.relative_to(folder).parts for path in files]
    if any(len(parts) == 1 for parts in tops):  # images directly in the folder: no classes
        return files, [-1] * len(files), []
    classes = sorted({parts[0] for parts in tops})
    index = {name: i for i, name in enumerate(classes)}
    return files, [index[parts[0]] for parts in tops], classes


class ImageFiles(Dataset):
    """Images read from their files when indexed, in PIL's `mode` ("RGB" or "L"), through
    `transform` (PIL image -> uint8 tensor), as floats k / 255, (C, H, W), with their labels."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        mode: str,
        transform: Callable[[Image.Image], Tensor],
    ) -> None:
        self.files, self.labels = list(files), list(labels)
        self.mode, self.transform = mode, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                pixels = self.transform(image.convert(self.mode))  # uint8 (C, H, W)
        # PIL's errors for bad files, and for an image so large it could be a decompression bomb
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise UserError(
                f"{path} cannot be read as an image ({err}); remove or replace that file"
            ) from None
        return pixels.float().div_(255), self.labels[index]


def resize_and_crop(image_size: int, crop_size: int | None = None) -> v2.Compose:
    """PIL image -> uint8 tensor: centre-cropped to `crop_size` first if given, then the
    shorter side resized to `image_size` and centre-cropped to a square."""
    crop = [v2.CenterCrop(crop_size)] if crop_size else []
    return v2.Compose([*crop, v2.Resize(image_size), v2.CenterCrop(image_size), v2.PILToTensor()])


CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_BATCH = 10_000  # images per file of the real set
CIFAR10_CLASSES = 10
# The published MD5 sums of the files, as torchvision's CIFAR10 lists them.
CIFAR10_MD5 = dict(datasets.CIFAR10.train_list + datasets.CIFAR10.test_list)
CIFAR10_TRAIN = [name for name, _ in datasets.CIFAR10.train_list]  # data_batch_1 to 5
CIFAR10_TEST = [name for name, _ in datasets.CIFAR10.test_list]  # test_batch


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a function or class that reading CIFAR-10's files never calls."""


class CIFARUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's batch files, which hold dicts of lists, strings, numbers and numpy
    arrays: the only globals it resolves are those that rebuild a numpy array (and bytes), so
    a file that names any other (e.g. os.system) is refused before anything is called."""

    RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, any version
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Bytes in a protocol-2 pickle that Python 3 wrote (as torch's weights_only allows).
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise RefusedGlobal(f"{module}.{name}")
        return self.ALLOWED[module, name]


def read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    """A CIFAR-10 batch file's images, uint8 (N, 3, 32, 32), and labels, int64 (N,). A file
    of the real set's size must match its published MD5; a UserError names a bad file."""
    data = path.read_bytes()

    def bad(why: str) -> UserError:
        return UserError(
            f"{path} is damaged or not a CIFAR-10 batch file: {why}. Delete it so that it is "
            "downloaded again, or point data.data_dir to a good copy of CIFAR-10"
        )

    try:
        content = CIFARUnpickler(io.BytesIO(data), encoding="latin1").load()
    except RefusedGlobal as err:
        raise bad(f"it was refused: it holds code (it calls {err}), which is never run") from None
    except Exception as err:  # truncated, or not a pickle
        raise bad(f"it cannot be unpickled ({type(err).__name__}: {err})") from None
    if not isinstance(content, dict) or not {"data", "labels"} <= set(content):
        raise bad("it holds no dict with `data` and `labels`")
    images, labels = content["data"], content["labels"]
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2):
        raise bad("its `data` is not a uint8 array of N x 3072 bytes")
    if images.shape[1] != 3 * 32 * 32 or len(labels) != len(images):
        raise bad(f"its `data` has shape {images.shape} for {len(labels)} labels")
    if not all(isinstance(y, int) and 0 <= y < CIFAR10_CLASSES for y in labels):
        raise bad("its labels are not integers 0 to 9")
    if len(images) == CIFAR10_BATCH and (md5 := _md5(data)) != CIFAR10_MD5.get(path.name):
        raise bad(f"its MD5 is {md5}, not CIFAR-10's {CIFAR10_MD5.get(path.name)}")
    pixels = torch.from_numpy(images.reshape(-1, 3, 32, 32).copy())  # (N, 3072) -> (N, 3, 32, 32)
    return pixels, torch.tensor(labels, dtype=torch.int64)


CELEBA_FOLDER, CELEBA_IMAGES, CELEBA_PARTITION = (
    "celeba",
    "img_align_celeba",
    "list_eval_partition.txt",
)
CELEBA_SPLITS = ("train", "val", "test")  # partition 0, 1 and 2


def celeba_splits(root: Path) -> dict[str, list[Path]]:
    """CelebA's image files by split, from `list_eval_partition.txt` in `root` (lines such as
    `000001.jpg 0`: 0 train, 1 val, 2 test), in the file's order."""
    layout = (
        f"CelebA's layout is <data_dir>/{CELEBA_FOLDER}/{CELEBA_IMAGES}/*.jpg and "
        f"<data_dir>/{CELEBA_FOLDER}/{CELEBA_PARTITION} (torchvision's); point data.data_dir "
        f"to the folder that holds {CELEBA_FOLDER}/"
    )
    for needed in (root / CELEBA_IMAGES, root / CELEBA_PARTITION):
        if not needed.exists():
            raise UserError(f"CelebA: {needed} is missing. {layout}")
    splits: dict[str, list[Path]] = {split: [] for split in CELEBA_SPLITS}
    partition = root / CELEBA_PARTITION
    for number, line in enumerate(partition.read_text().splitlines(), 1):
        if not line.strip():
            continue
        name, _, split = line.strip().rpartition(" ")
        if not name or split not in ("0", "1", "2"):
            raise UserError(
                f"{partition}, line {number}: {line.strip()!r} is not `<image>.jpg <0, 1 or 2>`"
            )
        splits[CELEBA_SPLITS[int(split)]].append(root / CELEBA_IMAGES / name.strip())
    return splits
