"""Shared fixtures: tiny MNIST-format, tensor, image-folder, CIFAR-10 and CelebA files, so tests
run the real loading code."""

import gc
import json
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .warm import WarmPython

# The slowest files first (measured with --durations=0): pytest-xdist hands out whole files
# (--dist loadfile, and --no-loadscope-reorder keeps this order instead of sorting files by
# their number of tests), so both workers end on short files and finish together.
SLOWEST_FILES = (  # paths under tests/
    "e2e/test_bad_inputs.py",
    "e2e/test_scripts.py",
    "e2e/test_resume.py",
    "e2e/test_natural_images.py",
    "e2e/test_safe_loading.py",
    "e2e/test_train.py",
    "unit/test_parts.py",
    "e2e/test_reliability.py",
    "unit/test_config.py",
    "e2e/test_saving.py",
    "e2e/test_sweeps.py",
    "e2e/test_more_bad_inputs.py",
    "unit/test_loggers.py",
    "e2e/test_variants.py",
    "e2e/test_benchmark.py",
    "unit/test_train_debug.py",
    "unit/test_likelihoods.py",
    "e2e/test_readme.py",
    "unit/test_networks.py",
    "unit/test_train_presets.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    tests = Path(__file__).parent
    items.sort(key=lambda item: rank.get(item.path.relative_to(tests).as_posix(), len(rank)))


ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN, TINY_TEST = 320, 160
CONF = ROOT / "conf"
# Overrides that fit the tiny data and keep runs short and quiet.
TINY_RUN = [
    "data.val_size=64",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "model.encoder.hidden_sizes=[32]",
    "model.decoder.hidden_sizes=[32]",
    "model.latent_size=4",
    "trainer.max_epochs=1",
    "callbacks.progress_bar.refresh_rate=0",
]


# The presets that tests/unit/test_train_presets.py trains, each against its paper's (or its
# own) settings; tests/e2e/test_variants.py trains every other experiment on disk.
PRESETS_TRAINED = [
    "burda2015_vae",
    "burda2015_iwae",
    "vampprior2018",
    "vampprior2018_standard",
    "cpu_hour",
    "cifar10_vae",
    "celeba64_vae",
]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format of the MNIST files (big-endian header)."""
    path.write_bytes(
        struct.pack(">HBB", 0, 0x08, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


def make_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n noisy 28x28 images whose label is the row of a bright bar, and those labels."""
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28))
    for image, label in zip(images, labels, strict=True):
        image[4 + 2 * label : 6 + 2 * label, 4:24] = 255
    return images, labels


def write_idx_set(root: Path, folder: str, seed: int) -> Path:
    """Write root/FOLDER/raw/ with TINY_TRAIN training and TINY_TEST test images; return root."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", TINY_TRAIN), ("t10k", TINY_TEST)):
        images, labels = make_digits(n, rng)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding MNIST/raw/ with 320 training and 160 test images."""
    return write_idx_set(tmp_path_factory.mktemp("data"), "MNIST", seed=0)


@pytest.fixture(scope="session")
def tiny_fashion_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding FashionMNIST/raw/ with 320 training and 160 test images."""
    return write_idx_set(tmp_path_factory.mktemp("data"), "FashionMNIST", seed=1)


@pytest.fixture(scope="session")
def tiny_kmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding KMNIST/raw/ with 320 training and 160 test images."""
    return write_idx_set(tmp_path_factory.mktemp("data"), "KMNIST", seed=2)


def write_arrays(path: Path, **arrays: np.ndarray) -> Path:
    """Save named arrays as a .npz file, or as a .pt dict of tensors, by the path's suffix."""
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        torch.save({key: torch.as_tensor(value) for key, value in arrays.items()}, path)
    return path


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .npz of TINY_TRAIN uint8 20 x 20 images (N x H x W) and their labels, 0 to 9."""
    images, labels = make_digits(TINY_TRAIN, np.random.default_rng(3))
    crop = images[:, 4:24, 4:24].astype(np.uint8)  # the label's bar now on rows 2 * label, +1
    path = tmp_path_factory.mktemp("tensors") / "digits.npz"
    return write_arrays(path, images=crop, labels=labels)


@pytest.fixture(scope="session")
def tiny_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .pt of 200 float RGB 16 x 16 images in [0, 1] (N x 3 x 16 x 16), with no labels."""
    images = torch.rand(200, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    return write_arrays(tmp_path_factory.mktemp("tensors") / "colours.pt", images=images)


def write_images(
    folder: Path, count: int, rng: np.random.Generator, size: tuple = (12, 10)
) -> None:
    """Write `count` random RGB images of `size` (width, height) into folder, PNG but every
    third one JPEG, named 00.png, 01.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.{'jpg' if i % 3 == 2 else 'png'}")


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Image folders of 12 x 10 RGB images: flat/ (48, some in a sub-folder: no classes),
    classes/{ant,bee}/ (12 each), and split/{train,test}/{ant,bee}/ (10 and 3 each)."""
    root, rng = tmp_path_factory.mktemp("images"), np.random.default_rng(5)
    write_images(root / "flat", 40, rng)
    write_images(root / "flat" / "more", 8, rng)
    for name in ("ant", "bee"):
        write_images(root / "classes" / name, 12, rng)
        write_images(root / "split" / "train" / name, 10, rng)
        write_images(root / "split" / "test" / name, 3, rng)
    return root


CIFAR_PER_FILE = 8  # images in each tiny batch file


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """A CIFAR-10 batch file as the real ones are: a pickled dict with `data` (N x 3072
    uint8, the red, green and blue planes of each image) and `labels`, protocol 2."""
    content = {"batch_label": path.name, "labels": labels, "data": images, "filenames": []}
    path.write_bytes(pickle.dumps(content, protocol=2))


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding cifar-10-batches-py/ with 5 x 8 training and 8 test images,
    labelled 0 to 9 in turn; the first (red) pixel of each image holds its label."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(6)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for number, name in enumerate(names):
        labels = [(number * CIFAR_PER_FILE + i) % 10 for i in range(CIFAR_PER_FILE)]
        images = rng.integers(0, 256, (CIFAR_PER_FILE, 3072), dtype=np.uint8)
        images[:, 0] = labels  # the red plane's first pixel: the label
        write_cifar_batch(folder / name, images, labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}, 2))
    return root


CELEBA_PARTITION = [0] * 12 + [1] * 4 + [2] * 4  # train, val, test


@pytest.fixture(scope="session")
def tiny_celeba(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding celeba/ in torchvision's layout: 20 JPEGs of CelebA's 178 x 218
    and list_eval_partition.txt, 12 train, 4 val and 4 test."""
    root = tmp_path_factory.mktemp("data")
    write_images(root / "celeba" / "img_align_celeba", 20, np.random.default_rng(7), (178, 218))
    images = sorted((root / "celeba" / "img_align_celeba").iterdir())
    for i, path in enumerate(images):  # named as CelebA's are
        path.rename(path.with_name(f"{i + 1:06d}.jpg"))
    lines = [f"{i + 1:06d}.jpg {split}" for i, split in enumerate(CELEBA_PARTITION)]
    (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


# Downloads fail at once: no proxy answers there.
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def run_train(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, fresh: bool = False
) -> subprocess.CompletedProcess:
    """Run `python train.py ARGS` as a user would, offline; `fresh`: in a new interpreter."""
    return run_python(ROOT / "train.py", *args, cwd=cwd, env=env, fresh=fresh)


def run_script(
    name: str, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, fresh: bool = False
) -> subprocess.CompletedProcess:
    """Run `python scripts/NAME.py ARGS` as a user would, offline."""
    return run_python(ROOT / "scripts" / f"{name}.py", *args, cwd=cwd, env=env, fresh=fresh)


# Runs fork from a Python that has imported torch and Lightning (tests/warm.py), which saves
# those seconds of each run; VAELAB_TESTS_FRESH=1, or fresh=True, starts a new interpreter.
# Under pytest-xdist, each worker and the runs it starts compute on one thread: with a worker
# per core, torch's default of a thread per core in each of them (and in their runs) would
# oversubscribe the cores, and OpenMP's spin-waits then cost more than the threads gain on
# these tiny models. A sweep's joblib workers still get OMP_NUM_THREADS from joblib.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
WARM = WarmPython()
FRESH = os.environ.get("VAELAB_TESTS_FRESH") == "1"


def run_python(
    script: Path, *args: str, cwd: Path, env: dict[str, str] | None, fresh: bool = False
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **OFFLINE, **(env or {})}
    if not (fresh or FRESH):
        return WARM.run(script, list(args), cwd=cwd, env=full_env, timeout=300)
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def read_evaluation(run_dir: Path) -> dict:
    """The one evaluation that scripts/evaluate.py kept in the run folder, as written to
    evaluations/<checkpoint>.json."""
    (path,) = (run_dir / "evaluations").glob("*.json")
    return json.loads(path.read_text())


def pytest_sessionfinish() -> None:
    WARM.close()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config `python train.py OVERRIDES` would run, with its Hydra runtime set."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", [*overrides, f"hydra.runtime.output_dir={output_dir}"], True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def readme_blocks(section: str) -> list[str]:
    """The fenced code blocks of one README section, in order."""
    readme = (ROOT / "README.md").read_text()
    # Any level of heading from ## (a line starting "# " in a code block is a comment).
    start = re.search(rf"^##+ {re.escape(section)}\n", readme, flags=re.M).end()
    following = re.search(r"^##+ ", readme[start:], flags=re.M)  # the next heading
    end = start + following.start() if following else len(readme)
    return re.findall(r"```\w*\n(.*?)```", readme[start:end], flags=re.S)


def read_events(run_dir: Path) -> EventAccumulator:
    """All scalars and images of the TensorBoard event files in a run folder."""
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


# Three short epochs of 8 steps, with last.ckpt also written every 4 steps, and a scheduler
# (whose state is resumed too): the reference run of the exact-resume tests.
RESUMABLE = [
    *TINY_RUN,
    "trainer.max_epochs=3",
    "trainer.deterministic=true",
    "callbacks.last_checkpoint.every_n_train_steps=4",
    "model/scheduler=exponential",  # its state is resumed too
]


def final_metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


@pytest.fixture(scope="session")
def uninterrupted(tiny_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The RESUMABLE run, uninterrupted; read only."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result = run_train(f"data.data_dir={tiny_mnist}", *RESUMABLE, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return run_dir


def exploding_at(step: int) -> list[str]:
    """Overrides under which the training loss is NaN from training step `step` on."""
    return ["model._target_=tests.helpers.ExplodingVAE", f"+model.explode_at_step={step}"]


def pytest_collection_finish() -> None:
    # What the test modules imported, out of the garbage collector's sight (as in warm.py):
    # the full collections during in-process training then skip torch's and Lightning's heap.
    gc.collect()
    gc.freeze()
