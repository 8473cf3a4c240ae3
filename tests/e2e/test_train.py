"""End to end: `python train.py` as a user runs it, on tiny MNIST-format files."""

import re
import subprocess
from pathlib import Path

import pytest
import torch

from vaelab.datasets import IDX_FILES
from vaelab.module import VAEModule
from vaelab.train import train

from ..conftest import TINY_RUN, compose_train, read_events, run_train

pytestmark = pytest.mark.slow  # runs of train.py, and a fit of two epochs

STEPS_PER_EPOCH = 8  # 256 training images in batches of 32
METRICS = {f"{stage}/{q}" for stage in ("train", "val", "test") for q in ("loss", "recon", "kl")}


@pytest.fixture(scope="module")
def trained_run(
    tiny_mnist: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess, Path]:
    """A two-epoch run started, like a user's, from its own working folder, in a new
    interpreter (the suite's other runs fork from a warm one): output, folder."""
    cwd = tmp_path_factory.mktemp("user")
    args = [f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=2"]
    result = run_train(*args, cwd=cwd, fresh=True)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (cwd / "outputs").glob("*/*")
    return result, run_dir


@pytest.fixture(scope="module")
def trained(trained_run: tuple[subprocess.CompletedProcess, Path]) -> Path:
    return trained_run[1]


def test_the_console_shows_each_message_once(
    trained_run: tuple[subprocess.CompletedProcess, Path],
) -> None:
    result, run_dir = trained_run
    console = result.stdout + result.stderr
    assert console.count("Seed set to 0") == 1 and console.count("max_epochs=2` reached") == 1
    assert "Seed set to 0" in (run_dir / "train.log").read_text()
    assert "multiple `ModelCheckpoint`" not in console  # the test names the best checkpoint
    # the composed config, once, as a tree with its values resolved; no adverts or
    # third-party deprecation notices
    assert console.count("_target_: vaelab.module.VAEModule") == 1
    assert "├── model" in console and "default_root_dir: /" in console
    assert "${output_dir}" not in console  # resolved
    assert "💡" not in console and "LeafSpec" not in console


def test_a_run_gets_a_dated_folder(trained: Path) -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", f"{trained.parent.name}/{trained.name}")
    assert (trained / ".hydra" / "config.yaml").is_file()


def test_tensorboard_has_the_metrics_images_and_hparams(trained: Path) -> None:
    events = read_events(trained)
    assert METRICS <= set(events.Tags()["scalars"])
    assert {"train/objective", "hp/best_val_loss", "hp/test_loss"} <= set(events.Tags()["scalars"])
    for tag in ("val/reconstructions", "val/samples"):
        assert [image.step for image in events.Images(tag)] == [
            STEPS_PER_EPOCH,
            2 * STEPS_PER_EPOCH,
        ]
    val_losses = [event.value for event in events.Scalars("val/loss")]
    assert len(val_losses) == 2 and val_losses[1] < val_losses[0] < 784 * 0.7  # it learns
    hparams = events.PluginTagToContent("hparams")
    assert b"latent_size" in hparams["_hparams_/session_start_info"]


def test_best_and_last_checkpoints_load_without_arguments(trained: Path) -> None:
    checkpoints = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints
    best = next(p for p in (trained / "checkpoints").iterdir() if p.name.startswith("epoch"))
    model = VAEModule.load_from_checkpoint(best)
    assert model.hparams.latent_size == 4 and model.hparams.encoder["hidden_sizes"] == [32]
    assert model.sample(3).shape == (3, 1, 28, 28)


def test_resume_continues_from_the_checkpoint(
    trained: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    last = trained / "checkpoints" / "last.ckpt"
    result = run_train(
        f"data.data_dir={tiny_mnist}",
        *TINY_RUN,
        "trainer.max_epochs=3",
        f"ckpt_path={last}",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert (resumed["epoch"], resumed["global_step"]) == (2, 3 * STEPS_PER_EPOCH)
    # only the third epoch ran: one new validation
    assert len(read_events(tmp_path).Scalars("val/loss")) == 1


def test_a_sweep_gets_one_folder_per_job(tiny_mnist: Path, tmp_path: Path) -> None:
    result = run_train(
        "-m", f"data.data_dir={tiny_mnist}", *TINY_RUN, "model.latent_size=2,3", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [job.name[:2] for job in jobs] == ["0_", "1_"]
    for job, latent_size in zip(jobs, (2, 3), strict=True):
        assert f"model.latent_size-{latent_size}" in job.name and "data_dir" not in job.name
        assert "=" not in job.name  # so the folder can be named on Hydra's command line
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert "test/loss" in read_events(job).Tags()["scalars"]
        assert (
            VAEModule.load_from_checkpoint(job / "checkpoints" / "last.ckpt").hparams.latent_size
            == latent_size
        )


def test_train_returns_the_best_val_loss(tiny_mnist: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        [f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_epochs=2"], tmp_path
    )
    best = train(cfg)
    assert isinstance(best, float)
    assert best == pytest.approx(min(e.value for e in read_events(tmp_path).Scalars("val/loss")))


def test_missing_data_is_one_clear_message(tmp_path: Path) -> None:
    result = run_train(f"data.data_dir={tmp_path / 'nothing'}", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "nothing" / "MNIST" / "raw") in result.stderr
    assert all(name in result.stderr for name in IDX_FILES)
    assert "data.data_dir=" in result.stderr


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.latnt_size=3", "Key 'latnt_size' is not in struct"),
        ("model.latent_size=abc", "model.latent_size='abc'"),
    ],
)
def test_config_mistakes_name_the_key(
    override: str, message: str, tiny_mnist: Path, tmp_path: Path
) -> None:
    result = run_train(f"data.data_dir={tiny_mnist}", override, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("outputs/*/*/checkpoints"))  # nothing was trained
