"""Fashion-MNIST, KMNIST and a researcher's own tensor files, through the real DataModules."""

import gzip
import hashlib
import os
import pickle
import re
import shutil
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from vaelab import UserError
from vaelab.config import check_types
from vaelab.data import (
    FashionMNISTDataModule,
    ImageDataModule,
    KMNISTDataModule,
    MNISTDataModule,
    TensorDataModule,
)
from vaelab.datasets import FASHION_MNIST, IDX_FILES, load_image_file, read_cifar_batch

from ..conftest import (
    TINY_TEST,
    TINY_TRAIN,
    compose_train,
    write_arrays,
    write_cifar_batch,
    write_idx,
)

IDX_SETS = [  # (fixture, DataModule, folder, name in messages)
    ("tiny_mnist", MNISTDataModule, "MNIST", "MNIST"),
    ("tiny_fashion_mnist", FashionMNISTDataModule, "FashionMNIST", "Fashion-MNIST"),
    ("tiny_kmnist", KMNISTDataModule, "KMNIST", "KMNIST"),
]
NEW_IDX_SETS = IDX_SETS[1:]


def served(loader: object) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and all labels of one epoch, each batch checked to be an (images, labels) pair."""
    batches = list(loader)
    assert all(isinstance(batch, tuple) and len(batch) == 2 for batch in batches)
    images, labels = zip(*batches, strict=True)
    return torch.cat(images), torch.cat(labels)


@pytest.mark.parametrize("fixture,cls,folder,name", IDX_SETS)
def test_each_idx_set_loads_from_its_folder(
    fixture: str, cls: type, folder: str, name: str, request: pytest.FixtureRequest
) -> None:
    data_dir = request.getfixturevalue(fixture)
    dm = cls(str(data_dir), batch_size=32, val_size=64)
    assert dm.image_shape == (1, 28, 28) and dm.num_classes == 10  # known before setup
    dm.setup("fit")
    assert dm.train_images.shape == (TINY_TRAIN - 64, 1, 28, 28)
    assert dm.val_images.shape == (64, 1, 28, 28)
    assert dm.test_images.shape == (TINY_TEST, 1, 28, 28)
    assert dm.train_images.dtype == torch.float32 and dm.train_labels.dtype == torch.int64
    assert dm.train_images.min() == 0 and dm.train_images.max() == 1
    # the pixels are the file's bytes / 255, in the file's order
    raw = data_dir / folder / "raw" / "t10k-images-idx3-ubyte"
    pixels = np.frombuffer(raw.read_bytes(), np.uint8, offset=16).reshape(TINY_TEST, 1, 28, 28)
    assert torch.equal(dm.test_images, torch.from_numpy(pixels / 255).float())
    # each tiny image's label is the row of its bright bar: rows 4 + 2 * label and the next
    for images, labels in (served(dm.train_dataloader()), served(dm.test_dataloader())):
        bar_row = images.mean(-1).squeeze(1).argmax(-1)  # (N, 1, 28, 28) -> (N,)
        assert torch.equal((bar_row - 4) // 2, labels)
    assert len(served(dm.train_dataloader())[0]) == TINY_TRAIN - 64


def test_the_three_sets_are_read_from_their_own_files(
    tiny_mnist: Path, tiny_fashion_mnist: Path, tiny_kmnist: Path
) -> None:
    sets = [
        MNISTDataModule(str(tiny_mnist), val_size=64),
        FashionMNISTDataModule(str(tiny_fashion_mnist), val_size=64),
        KMNISTDataModule(str(tiny_kmnist), val_size=64),
    ]
    for dm in sets:
        dm.setup("fit")
    assert not torch.equal(sets[0].test_images, sets[1].test_images)
    assert not torch.equal(sets[1].test_images, sets[2].test_images)


@pytest.mark.parametrize("fixture,cls,folder,name", NEW_IDX_SETS)
def test_missing_files_name_the_set_and_its_folder(
    fixture: str, cls: type, folder: str, name: str, tiny_mnist: Path
) -> None:
    with pytest.raises(UserError) as error:
        cls(str(tiny_mnist)).setup("fit")  # a folder with MNIST only
    message = str(error.value)
    assert message.startswith(f"{name} was not found in {tiny_mnist / folder / 'raw'} (missing:")
    assert all(name in message for name in IDX_FILES)
    assert f"contains {folder}/ with `data.data_dir" in message and "VAELAB_DATA_DIR" in message


@pytest.mark.parametrize("fixture,cls,folder,name", NEW_IDX_SETS)
def test_a_failed_download_names_the_set_and_its_folder(
    fixture: str, cls: type, folder: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY"):  # nothing listens there: offline at once
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    monkeypatch.setattr(urllib.request, "_opener", None)  # one that reads those settings
    with pytest.raises(UserError) as error:
        cls(str(tmp_path)).prepare_data()
    message = str(error.value)
    assert message.startswith(f"{name} was not found in {tmp_path / folder / 'raw'} (download")
    assert f"contains {folder}/ with `data.data_dir" in message


@pytest.mark.parametrize("fixture,cls,folder,name", NEW_IDX_SETS)
def test_damaged_files_name_the_file_and_the_set(
    fixture: str, cls: type, folder: str, name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    data_dir = Path(shutil.copytree(request.getfixturevalue(fixture), tmp_path / "data"))
    raw = data_dir / folder / "raw"
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(UserError) as error:
        cls(str(data_dir), val_size=64).setup("fit")
    message = str(error.value)
    assert f"{images} is damaged or not the right file: it has" in message
    assert "bytes where its header promises" in message
    fix = "Delete it so that it is downloaded again, or point data.data_dir to a good copy of"
    assert f"{fix} {name}." in message
    write_idx(images, np.zeros((TINY_TRAIN, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(100))
    with pytest.raises(UserError, match="train-labels-idx1-ubyte is damaged .* its count differs"):
        cls(str(data_dir), val_size=64).setup("fit")


def test_real_sized_fashion_files_are_checked_against_the_published_gz_checksums(
    tiny_fashion_mnist: Path, tmp_path: Path
) -> None:
    """Only the .gz files' MD5s are published: a real-sized file is checked through its .gz."""
    data_dir = Path(shutil.copytree(tiny_fashion_mnist, tmp_path / "data"))
    raw = data_dir / "FashionMNIST" / "raw"
    labels = raw / "train-labels-idx1-ubyte"
    write_idx(labels, np.zeros(60_000))  # Fashion-MNIST's real size and header, wrong bytes
    gz = raw / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(labels.read_bytes()))
    with pytest.raises(UserError) as error:
        FASHION_MNIST.verify(raw)
    message = str(error.value)
    assert f"{gz} is damaged or not the right file: its MD5 is" in message
    assert "not Fashion-MNIST's 25c81989df183df01b3e8a0aad5dffbe" in message
    assert f"Delete it and {labels} so that they are downloaded again" in message
    # With a .gz whose checksum matches, the file itself must be what it unpacks to.
    md5 = {f"{name}.gz": "0" * 32 for name in IDX_FILES}
    md5["train-labels-idx1-ubyte.gz"] = hashlib.md5(gz.read_bytes()).hexdigest()
    trusted = replace(FASHION_MNIST, md5=md5)
    with pytest.raises(UserError, match="its count differs"):  # past the checksums: they agree
        trusted.verify(raw)
    write_idx(labels, np.ones(60_000))
    with pytest.raises(UserError, match="is not what train-labels-idx1-ubyte.gz beside it unpacks"):
        trusted.verify(raw)


def test_a_uint8_npz_with_labels(tiny_npz: Path) -> None:
    dm = TensorDataModule(str(tiny_npz), batch_size=32, val_size=40, test_size=60)
    assert dm.image_shape == (1, 20, 20) and dm.num_classes == 10  # known before setup
    dm.setup("fit")
    assert dm.train_images.shape == (TINY_TRAIN - 100, 1, 20, 20)
    assert dm.val_images.shape == (40, 1, 20, 20) and dm.test_images.shape == (60, 1, 20, 20)
    assert dm.train_images.dtype == torch.float32 and dm.train_labels.dtype == torch.int64
    assert dm.train_images.min() == 0 and dm.train_images.max() == 1
    # every image of the file in exactly one split, as its bytes / 255
    with np.load(tiny_npz) as file:
        pixels = torch.from_numpy(file["images"]).unsqueeze(1).float() / 255
    everything = torch.cat([dm.train_images, dm.val_images, dm.test_images])
    assert torch.equal(everything.flatten(1).unique(dim=0), pixels.flatten(1).unique(dim=0))
    assert len(everything.flatten(1).unique(dim=0)) == TINY_TRAIN
    # the labels travel with their images: the bar of label k is on rows 2k and 2k + 1
    for images, labels in (served(dm.train_dataloader()), served(dm.test_dataloader())):
        assert torch.equal(images.mean(-1).squeeze(1).argmax(-1) // 2, labels)


def test_a_float_pt_without_labels(tiny_pt: Path) -> None:
    dm = TensorDataModule(str(tiny_pt), batch_size=16, val_size=30, test_size=50)
    assert dm.image_shape == (3, 16, 16) and dm.num_classes == 0
    dm.setup("fit")
    assert dm.train_images.shape == (120, 3, 16, 16) and dm.test_images.shape == (50, 3, 16, 16)
    images, labels = served(dm.val_dataloader())
    assert images.shape == (30, 3, 16, 16) and torch.equal(labels, torch.full((30,), -1))
    original = torch.load(tiny_pt, weights_only=True)["images"]
    everything = torch.cat([dm.train_images, dm.val_images, dm.test_images])
    assert torch.equal(everything.flatten(1).sort(0).values, original.flatten(1).sort(0).values)


def test_the_held_out_splits_do_not_depend_on_the_seed(tiny_npz: Path) -> None:
    first, second = (
        TensorDataModule(str(tiny_npz), val_size=40, test_size=60, seed=seed) for seed in (1, 2)
    )
    first.setup("fit")
    second.setup("fit")
    assert torch.equal(first.val_images, second.val_images)
    assert torch.equal(first.test_images, second.test_images)


def test_the_sizes_must_leave_training_images(tiny_npz: Path) -> None:
    accepted = f"use 0 < test_size < 320, the number of images in {tiny_npz}"
    with pytest.raises(UserError, match=re.escape(f"test_size=320 is invalid: {accepted}")):
        TensorDataModule(str(tiny_npz), test_size=TINY_TRAIN)
    accepted = f"use 0 < val_size < 300, the size of {tiny_npz} less its test_size=20 test images"
    with pytest.raises(UserError, match=re.escape(f"val_size=300 is invalid: {accepted}")):
        TensorDataModule(str(tiny_npz), val_size=300, test_size=20)
    with pytest.raises(UserError, match="val_size=0 is invalid"):
        TensorDataModule(str(tiny_npz), val_size=0, test_size=20)
    with pytest.raises(UserError, match="batch_size=0 is invalid: use a positive integer"):
        TensorDataModule(str(tiny_npz), batch_size=0, val_size=20, test_size=20)


N = 10
UINT8 = np.zeros((N, 8, 8), np.uint8)
INTS = np.zeros(N, np.int64)
BAD_FILES = {  # what the message says: (file name, arrays)
    "has no `images` (its keys: pixels, y)": ("a.npz", {"pixels": UINT8, "y": INTS}),
    "keys other than `images` and `labels`: label": ("a.pt", {"images": UINT8, "label": INTS}),
    "images of shape (10, 64); use N x C x H x W or N x H x W": (
        "a.npz",
        {"images": UINT8.reshape(N, 64)},
    ),
    "images of shape (10, 1, 1, 8, 8)": ("a.npz", {"images": UINT8[:, None, None]}),
    "images of 8 x 6 pixels; use square ones": ("a.pt", {"images": np.zeros((N, 3, 8, 6))}),
    "holds no images (their shape: (0, 8, 8))": ("a.npz", {"images": UINT8[:0]}),
    "values outside [0, 1], e.g. 255.0; scale them": ("a.npz", {"images": UINT8 + 255.0}),
    "values outside [0, 1], e.g. nan": ("a.pt", {"images": np.full((N, 8, 8), np.nan)}),
    "images of dtype torch.int64; use uint8": ("a.npz", {"images": UINT8.astype(np.int64)}),
    "labels of shape (9,) for 10 images; use one label per image, shape (10,)": (
        "a.npz",
        {"images": UINT8, "labels": INTS[1:]},
    ),
    "labels below 0, e.g. -1; use class indices >= 0": (
        "a.pt",
        {"images": UINT8, "labels": INTS - 1},
    ),
    "labels of dtype torch.float64; use integers >= 0": (
        "a.npz",
        {"images": UINT8, "labels": INTS * 1.0},
    ),
}


@pytest.mark.parametrize("problem", BAD_FILES)
def test_each_bad_tensor_file_is_named_with_what_is_wrong(problem: str, tmp_path: Path) -> None:
    name, arrays = BAD_FILES[problem]
    path = write_arrays(tmp_path / name, **arrays)
    with pytest.raises(UserError) as error:
        TensorDataModule(str(path))
    assert str(error.value).startswith(f"path: {path} ")
    assert problem in str(error.value)


def test_files_that_are_not_readable_arrays(tmp_path: Path) -> None:
    def message(path: Path) -> str:
        with pytest.raises(UserError) as error:
            load_image_file(path)
        return str(error.value)

    missing = tmp_path / "nothing.npz"
    assert message(missing).startswith(
        f"{missing} does not exist; give the path of a .npz or .pt file"
    )
    text = tmp_path / "images.txt"
    text.write_text("1 2 3")
    assert message(text).startswith(f"{text} is neither a .npz nor a .pt file")
    for suffix in (".npz", ".pt"):
        garbage = tmp_path / f"garbage{suffix}"
        garbage.write_text("not arrays")
        assert message(garbage).startswith(f"{garbage} is not a readable {suffix} file (")
    npy = tmp_path / "one.npz"
    with open(npy, "wb") as file:
        np.save(file, UINT8)  # a .npy, under a .npz name
    assert "holds one ndarray, not named arrays" in message(npy)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(N, 8, 8), tensor)
    assert message(tensor) == (
        f"{tensor} holds no dict of tensors; "
        "save one with torch.save({'images': ..., 'labels': ...}, path)"
    )
    objects = tmp_path / "objects.pt"
    torch.save({"images": torch.zeros(N, 8, 8), "note": Path("x")}, objects)
    text = message(objects)
    assert (
        text.startswith(f"{objects} holds objects other than tensors")
        and "weights_only" not in text
    )


def test_the_config_builds_the_tensor_datamodule(tiny_npz: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data.path must be given"):
        check_types(compose_train(["data=tensors"], tmp_path))
    cfg = compose_train(
        ["data=tensors", f"data.path={tiny_npz}", "data.val_size=20", "data.test_size=20"], tmp_path
    )
    check_types(cfg)
    dm = instantiate(cfg.data)
    assert isinstance(dm, TensorDataModule) and dm.hparams.path == str(tiny_npz)


@pytest.mark.parametrize(
    "option,cls",
    [
        ("mnist", MNISTDataModule),
        ("fashion_mnist", FashionMNISTDataModule),
        ("kmnist", KMNISTDataModule),
    ],
)
def test_each_idx_config_builds_its_datamodule(option: str, cls: type, tmp_path: Path) -> None:
    dm = instantiate(compose_train([f"data={option}"], tmp_path).data)
    assert type(dm) is cls and dm.hparams.val_size == 5000


class Planted:
    """A pickled object that would run a shell command when unpickled by plain pickle."""

    def __init__(self, pwned: Path) -> None:
        self.pwned = pwned

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.pwned}",)


def test_a_cifar_file_that_holds_code_is_refused_unrun(tmp_path: Path) -> None:
    pwned, path = tmp_path / "PWNED", tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Planted(pwned), "labels": [0]}, protocol=2))
    with pytest.raises(UserError) as error:
        read_cifar_batch(path)
    assert not pwned.exists()
    message = str(error.value)
    assert message.startswith(f"{path} is damaged or not a CIFAR-10 batch file: it was refused")
    assert "(it calls posix.system)" in message and "\n" not in message


def test_a_real_sized_cifar_file_must_match_its_published_md5(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    write_cifar_batch(path, np.zeros((10_000, 3072), np.uint8), [0] * 10_000)
    with pytest.raises(UserError, match="its MD5 is .*, not CIFAR-10's c99cafc152244af753f7"):
        read_cifar_batch(path)
    write_cifar_batch(path, np.zeros((10, 3072), np.uint8), [0] * 10)  # a small one: no MD5
    assert read_cifar_batch(path)[0].shape == (10, 3, 32, 32)


@pytest.mark.parametrize(
    "fixture,cls,sizes",
    [(f, c, {}) for f, c, _, _ in IDX_SETS] + [("tiny_npz", TensorDataModule, {"test_size": 32})],
)
def test_the_hyperparameters_rebuild_the_datamodule(
    fixture: str, cls: type, sizes: dict, request: pytest.FixtureRequest
) -> None:
    """What a checkpoint keeps of the DataModule, its hyperparameters, rebuild the same data
    (its class is saved by VAEModule: tests/unit/test_checkpoints.py)."""
    dm = cls(str(request.getfixturevalue(fixture)), batch_size=16, val_size=64, **sizes)
    assert dm.state_dict() == {}  # nothing of its own to save: Lightning writes no entry
    rebuilt = cls(**dm.hparams)
    assert type(rebuilt) is cls and rebuilt.hparams == dm.hparams
    for each in (dm, rebuilt):
        each.setup("fit")
    assert torch.equal(rebuilt.val_images, dm.val_images)
    assert torch.equal(rebuilt.test_labels, dm.test_labels)
    assert isinstance(dm, ImageDataModule)
