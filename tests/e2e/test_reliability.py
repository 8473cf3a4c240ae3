"""Reliability: clear errors for bad input, verified data, exact resume, reproducible runs."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab import UserError
from vaelab.batches import InMemoryBatches
from vaelab.checkpoints import check_checkpoint, load_checkpoint
from vaelab.data import MNISTDataModule
from vaelab.train import train

from ..conftest import (
    RESUMABLE,
    TINY_RUN,
    compose_train,
    exploding_at,
    final_metrics,
    read_events,
    run_train,
    write_idx,
)
from ..helpers import mlp_vae


def killed_at(step: int, signal_name: str) -> list[str]:
    return [
        "+callbacks.kill._target_=tests.helpers.KillAtStep",
        f"+callbacks.kill.step={step}",
        f"+callbacks.kill.signal_name={signal_name}",
    ]


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.latent_size=0", "model.latent_size=0 is invalid: use a positive integer"),
        (
            "model.encoder.hidden_sizes=[400,0]",
            "model.encoder.hidden_sizes=[400, 0] is invalid: use a non-empty",
        ),
        ("model.decoder.hidden_sizes=[-5]", "model.decoder.hidden_sizes=[-5] is invalid"),
        (
            "model.encoder.activation=gelu",
            "model.encoder.activation='gelu' is invalid: use relu or",
        ),
        ("model/prior=mog", "model.prior.num_components=0 is invalid: use 1 or more"),
        ("model.lr=0", "model.lr=0 is invalid: use a learning rate > 0"),
        ("model.lr=-1e-3", "model.lr=-0.001 is invalid"),
        ("model.beta=-1", "model.beta=-1 is invalid: use a weight >= 0"),
        ("model.optimizer.weight_decay=-1", "model.optimizer: Invalid weight_decay value: -1"),
        ("model=conv_vae", "model.encoder.channels=[32, 64, 128] is invalid: each convolution"),
        ("model.iw_samples=0", "model.iw_samples=0 is invalid: use 1 \\(the VAE\\) or more"),
        ("model.kl_warmup_epochs=-1", "model.kl_warmup_epochs=-1 is invalid"),
        ("data.batch_size=0", "data.batch_size=0 is invalid: use a positive integer"),
        ("data.val_size=60000", "data.val_size=60000 is invalid: use 0 < val_size < 60000"),
        ("trainer.devices=0", "trainer:"),
        ("resume=true", "either ckpt_path=... or resume=true"),
    ],
)
def test_bad_values_are_named_before_any_data_is_read(
    override: str, message: str, tmp_path: Path
) -> None:
    # The data folder does not exist: an error about the value proves nothing was loaded.
    overrides = [f"data.data_dir={tmp_path / 'no-data'}", override]
    if override == "resume=true":
        overrides.append(f"ckpt_path={tmp_path / 'x.ckpt'}")
    if override == "model=conv_vae":
        overrides.append("model.encoder.channels=[32,64,128]")
    if override == "model/prior=mog":
        overrides.append("model.prior.num_components=0")
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("+", r"\+")):
        train(compose_train(overrides, tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_a_validation_split_too_large_for_the_files(tiny_mnist: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data.val_size=5000 leaves no training images.*holds 320"):
        train(compose_train([f"data.data_dir={tiny_mnist}", "trainer.max_epochs=1"], tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,message",
    [
        ("model.latent_size=0", "model.latent_size=0 is invalid"),
        ("hardware=tpu", "Could not find 'hardware/tpu'"),
        ("model=nope", "Could not find 'model/nope'"),
        ("model/optimizer=adamm", "Could not find 'model/optimizer/adamm'"),
        ("model/scheduler=linear", "Could not find 'model/scheduler/linear'"),
        ("model/likelihood=poisson", "Could not find 'model/likelihood/poisson'"),
        ("model/encoder=rnn", "Could not find 'model/encoder/rnn'"),
    ],
)
def test_the_command_line_shows_one_message(override: str, message: str, tmp_path: Path) -> None:
    result = run_train(f"data.data_dir={tmp_path}", override, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def data_copy(tiny_mnist: Path, tmp_path: Path) -> Path:
    """A copy of the tiny data that a test may damage."""
    return Path(shutil.copytree(tiny_mnist, tmp_path / "data"))


def setup_error(data_dir: Path) -> str:
    with pytest.raises(UserError) as error:
        MNISTDataModule(str(data_dir), val_size=64).setup("fit")
    return str(error.value)


def test_a_truncated_file_is_named(data_copy: Path) -> None:
    path = data_copy / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    message = setup_error(data_copy)
    assert str(path) in message and "bytes where its header promises" in message
    assert "Delete it" in message and "data.data_dir" in message


def test_a_file_with_a_wrong_header_is_named(data_copy: Path) -> None:
    images = data_copy / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    labels = data_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    images.write_bytes(labels.read_bytes())  # the labels where the images should be
    assert f"{images} is damaged or not the right file: its header" in setup_error(data_copy)


def test_images_and_labels_must_agree(data_copy: Path) -> None:
    write_idx(data_copy / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.zeros(100))
    assert "its count differs from the images'" in setup_error(data_copy)


def test_real_sized_files_are_checked_against_mnist_checksums(data_copy: Path) -> None:
    """A file of MNIST's real size makes the folder count as MNIST: checksums must match."""
    labels = data_copy / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    write_idx(labels, np.zeros(60_000))  # right size and header, wrong bytes
    message = setup_error(data_copy)
    assert "its MD5 is" in message and "not MNIST's" in message


def test_the_batch_iterator_resumes_where_training_stood() -> None:
    data = torch.arange(20.0).view(20, 1)

    def batches() -> InMemoryBatches:
        return InMemoryBatches(data, torch.arange(20), batch_size=6, shuffle=True, seed=3)

    def images(pairs: object) -> torch.Tensor:
        return torch.cat([images for images, labels in pairs])

    reference = batches()
    first_epoch, second_epoch = images(reference), images(reference)
    interrupted = batches()
    iterator = iter(interrupted)
    trained = [next(iterator) for _ in range(2)]
    state = interrupted.state_dict()
    assert state == {"epoch": 0, "batch": 2}
    resumed = batches()
    resumed.load_state_dict(state)
    rest, following = list(resumed), list(resumed)
    assert torch.equal(images(trained + rest), first_epoch)
    assert torch.equal(images(following), second_epoch)
    assert not torch.equal(first_epoch, second_epoch)
    # the labels travel with their images
    assert all(torch.equal(labels, images.flatten().long()) for images, labels in trained + rest)


@pytest.mark.slow
def test_same_seed_same_metrics_even_in_an_old_run_folder(
    uninterrupted: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    """Only resume=true continues a run: a last.ckpt left in the folder is not picked up
    (continued from the finished run's last.ckpt, this run would train nothing). Such a folder
    is refused unless overwrite=true (tests/e2e/test_resume.py), which removes the old run first."""
    shutil.copytree(uninterrupted / "checkpoints", tmp_path / "checkpoints")
    overrides = [f"data.data_dir={tiny_mnist}", *RESUMABLE, f"hydra.run.dir={tmp_path}"]
    assert "holds a run (checkpoints/)" in run_train(*overrides).stderr
    result = run_train(*overrides, "overwrite=true")
    assert result.returncode == 0, result.stderr
    assert final_metrics(tmp_path) == final_metrics(uninterrupted)
    assert final_metrics(tmp_path)["train/loss"] > 0 and final_metrics(tmp_path)["test/loss"] > 0


@pytest.mark.slow
def test_the_scheduler_sets_and_logs_each_epochs_learning_rate(uninterrupted: Path) -> None:
    logged = [event.value for event in read_events(uninterrupted).Scalars("lr-Adam")]
    assert logged == pytest.approx([1e-3, 9e-4, 8.1e-4])  # model.lr, times 0.9 each epoch


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_killed_run_resumes_exactly(
    signal_name: str, uninterrupted: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    """Killed mid-epoch 2 (step 14 of 24), resumed: the same final metrics, to the bit."""
    first = run_train(
        f"data.data_dir={tiny_mnist}",
        *RESUMABLE,
        f"hydra.run.dir={tmp_path}",
        *killed_at(14, signal_name),
    )
    assert first.returncode != 0 and not (tmp_path / "metrics.json").exists()
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    # SIGKILL leaves the periodic checkpoint of step 12; SIGTERM and Ctrl-C save at step 14
    assert last["global_step"] == {"SIGKILL": 12, "SIGTERM": 14, "SIGINT": 14}[signal_name]
    resumed = run_train(
        f"data.data_dir={tiny_mnist}", *RESUMABLE, f"hydra.run.dir={tmp_path}", "resume=true"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert final_metrics(tmp_path) == final_metrics(uninterrupted)


@pytest.mark.slow
def test_divergence_stops_with_the_step_and_keeps_the_good_checkpoint(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    result = run_train(
        f"data.data_dir={tiny_mnist}",
        *RESUMABLE,
        f"hydra.run.dir={tmp_path}",
        *exploding_at(10),
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert (
        "not finite at step 10" in result.stderr
        and f"The last good checkpoint: {last}" in result.stderr
    )
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 8
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


def test_a_random_seed_is_logged(tiny_mnist: Path, tmp_path: Path) -> None:
    cfg = compose_train([f"data.data_dir={tiny_mnist}", *TINY_RUN, "seed=null"], tmp_path)
    train(cfg)
    logged = (tmp_path / "hparams.yaml").read_text()
    assert isinstance(cfg.seed, int) and f"seed: {cfg.seed}" in logged
    # overwrite=true: the folder holds the first run
    again = compose_train(
        [f"data.data_dir={tiny_mnist}", *TINY_RUN, "seed=null", "overwrite=true"], tmp_path
    )
    train(again)  # another random seed: equal by chance once in 2^31 runs
    assert again.seed != cfg.seed


@pytest.fixture(scope="module")
def checkpoint(uninterrupted: Path) -> Path:
    return uninterrupted / "checkpoints" / "last.ckpt"


def test_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.ckpt"
    path.write_text("not a checkpoint")
    with pytest.raises(UserError, match="notes.ckpt is not a readable checkpoint") as error:
        load_checkpoint(path)
    assert "weights_only" not in str(error.value)  # torch's advice to load it unsafely


def test_a_pickle_of_other_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.ckpt"
    loader = InMemoryBatches(torch.zeros(2, 1), torch.zeros(2, dtype=torch.int64), 1, False)
    torch.save({"state_dict": {}, "loader": loader}, path)
    with pytest.raises(UserError, match="other.ckpt is not a checkpoint of this project") as error:
        load_checkpoint(path)
    assert "InMemoryBatches" in str(error.value) and "weights_only" not in str(error.value)


@pytest.mark.slow
def test_a_checkpoint_of_an_older_version(tmp_path: Path) -> None:
    """The hyperparameters of the single-class VAEModule (before the parts) name no parts."""
    path = tmp_path / "old.ckpt"
    old = {"latent_size": 4, "hidden_sizes": [32], "network": "mlp", "optimizer": "adam"}
    torch.save({"state_dict": {}, "hyper_parameters": old}, path)
    with pytest.raises(UserError, match="old.ckpt was not written by this version of vaelab"):
        load_checkpoint(path)
    torch.save({"state_dict": {}, "hyper_parameters": {"optimizer": "adam"}}, path)
    with pytest.raises(UserError, match="old.ckpt was not written by this version of vaelab"):
        load_checkpoint(path)


@pytest.mark.slow  # its checkpoint comes from a train.py run
def test_a_truncated_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "half.ckpt"
    path.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(UserError, match="half.ckpt is not a readable checkpoint"):
        load_checkpoint(path)


@pytest.mark.slow
def test_a_checkpoint_of_another_shape(checkpoint: Path) -> None:
    with pytest.raises(
        UserError, match=r"model.latent_size=4 there, 5 here.*settings it was trained with"
    ):
        check_checkpoint(checkpoint, mlp_vae([32], latent_size=5))
    check_checkpoint(checkpoint, mlp_vae([32], latent_size=4, lr=0.1))  # shapes agree


@pytest.mark.slow
def test_resuming_from_a_bad_checkpoint_is_one_message(tiny_mnist: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.ckpt").write_text("garbage")
    result = run_train(
        f"data.data_dir={tiny_mnist}", *TINY_RUN, f"ckpt_path={tmp_path / 'bad.ckpt'}", cwd=tmp_path
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "bad.ckpt is not a readable checkpoint" in result.stderr
