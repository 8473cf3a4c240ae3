"""More bad inputs a user could give (issue 21): each is refused in one line naming it."""

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf
from torch.optim.lr_scheduler import CosineAnnealingLR, ExponentialLR, ReduceLROnPlateau, StepLR

from vaelab import UserError
from vaelab.config import KEPT_BYTES, OutputCheck, check_run, check_sweep, folder_name
from vaelab.datasets import load_image_file
from vaelab.module import VAEModule
from vaelab.networks import ConvDecoder, ConvEncoder
from vaelab.schedules import check_scheduler
from vaelab.train import build, out_of_memory, train

from ..conftest import CONF, TINY_RUN, compose_train, run_train, write_arrays


@pytest.mark.parametrize("network", [ConvEncoder, ConvDecoder])
def test_conv_refuses_an_odd_image_side_with_a_fix_that_exists(network: type) -> None:
    # Before, "give at most 0 channel counts, e.g. [32, 64]": neither is possible.
    with pytest.raises(UserError, match=r"7x7 images cannot be halved.*model/encoder=mlp"):
        network(image_shape=(1, 7, 7), latent_size=2)


def test_conv_suggests_as_many_channel_counts_as_fit() -> None:
    # 6 = 2 x 3 halves once: the example must have one count, not [32, 64].
    with pytest.raises(UserError, match=r"at most 1 channel counts, e.g. \[32\]$"):
        ConvEncoder(image_shape=(1, 6, 6), latent_size=2, channels=[8, 8])


def test_image_file_with_more_channels_than_a_picture_has(tmp_path: Path) -> None:
    """Five channels trained, then failed in the image logger at the first validation."""
    path = write_arrays(tmp_path / "five.npz", images=np.zeros((8, 5, 4, 4), np.uint8))
    with pytest.raises(UserError, match=r"five.npz has images of 5 channels .*C from 1 to 4"):
        load_image_file(path)
    rgba = write_arrays(tmp_path / "rgba.npz", images=np.zeros((8, 4, 4, 4), np.uint8))
    assert load_image_file(rgba)[0].shape == (8, 4, 4, 4)  # four are still taken


@pytest.mark.parametrize(
    "images,kind",
    [
        (torch.rand(8, 1, 4, 4).to_sparse(), "sparse_coo"),
        (torch.rand(8, 1, 4, 4, device="meta"), "meta"),
    ],
)
def test_pt_file_with_a_tensor_without_plain_values(
    images: torch.Tensor, kind: str, tmp_path: Path
) -> None:
    """A sparse or meta tensor loads with weights_only=True, then failed with a traceback."""
    path = tmp_path / "odd.pt"
    torch.save({"images": images}, path)
    with pytest.raises(UserError, match=rf"odd.pt holds `images` as a {kind} tensor; save a dense"):
        load_image_file(path)


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


@pytest.mark.parametrize(
    "build,message",
    [
        # Each of these fails at the first epoch's end with ZeroDivisionError.
        (lambda o: StepLR(o, step_size=0), r"scheduler.step_size=0 is invalid"),
        (lambda o: CosineAnnealingLR(o, T_max=0), r"scheduler.T_max=0 is invalid"),
        # trainer.max_epochs=-1 (with max_steps) gives the cosine schedule T_max=-1.
        (lambda o: CosineAnnealingLR(o, T_max=-1), r"T_max=-1 .*set it when max_epochs=-1"),
        # Each of these trains on silently: with a negative learning rate after one epoch,
        (lambda o: ExponentialLR(o, gamma=-1.0), r"scheduler.gamma=-1.0 is invalid"),
        (lambda o: StepLR(o, step_size=1, gamma=-0.5), r"scheduler.gamma=-0.5 is invalid"),
        (lambda o: ReduceLROnPlateau(o, factor=-1.0), r"scheduler.factor=-1.0 is invalid"),
        # the rate halved after every epoch, or halved while val/loss keeps falling.
        (lambda o: ReduceLROnPlateau(o, patience=-1), r"scheduler.patience=-1 is invalid"),
        (lambda o: ReduceLROnPlateau(o, mode="max"), r"scheduler.mode='max' is invalid: use min"),
    ],
)
def test_scheduler_settings_that_torch_takes_but_cannot_use(build, message: str) -> None:
    with pytest.raises(UserError, match=message):
        check_scheduler(build(optimizer()))


def test_scheduler_good_settings_pass() -> None:
    o = optimizer()
    for scheduler in (StepLR(o, 5, 0.5), CosineAnnealingLR(o, 1), ReduceLROnPlateau(o, patience=0)):
        check_scheduler(scheduler)  # no error; a bad one raises, as above
    assert o.param_groups[0]["lr"] == 0.1


def test_vae_names_a_bad_scheduler_setting_when_built() -> None:
    """Needs `check_scheduler(scheduler)` in VAEModule.configure_optimizers (module.py)."""
    step = {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 0}
    with pytest.raises(UserError, match=r"^scheduler.step_size=0 is invalid"):
        VAEModule(latent_size=2, scheduler=step)


@pytest.mark.slow
def test_train_refuses_a_cosine_schedule_of_zero_epochs_in_one_line(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """Before, a ZeroDivisionError traceback at the end of the first epoch."""
    result = run_train(
        *TINY_RUN,
        f"data.data_dir={tiny_mnist}",
        f"hydra.run.dir={tmp_path}",
        "model/scheduler=cosine",
        "model.scheduler.T_max=0",
    )
    assert result.returncode == 1
    assert "model.scheduler.T_max=0 is invalid: use 1 or more epochs" in result.stderr
    assert "Traceback" not in result.stderr and "ZeroDivisionError" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()  # refused before training


@pytest.mark.slow
def test_train_refuses_five_channel_images_before_training(tmp_path: Path) -> None:
    """Before, an epoch was trained and then a PIL TypeError traceback from the image logger."""
    images = np.random.default_rng(0).integers(0, 255, (320, 5, 8, 8)).astype(np.uint8)
    path = write_arrays(tmp_path / "five.npz", images=images)
    result = run_train(
        *TINY_RUN,
        "data=tensors",
        f"data.path={path}",
        "data.test_size=64",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 1
    assert "five.npz has images of 5 channels" in result.stderr
    assert "Traceback" not in result.stderr


def interrupted(
    tiny_mnist: Path, run_dir: Path, stage: str, signal_name: str, *overrides: str
) -> DictConfig:
    """A tiny run's config whose `stage` ("test", or "val" of the 2nd epoch) gets a signal."""
    return compose_train(
        [
            f"data.data_dir={tiny_mnist}",
            *TINY_RUN,
            "print_config=false",
            "+callbacks.signal._target_=tests.helpers.SignalAtEvaluation",
            "+callbacks.signal.dirpath=${callbacks.last_checkpoint.dirpath}",
            f"+callbacks.signal.copy_to={run_dir / 'last-as-training-left-it.ckpt'}",
            f"+callbacks.signal.stage={stage}",
            "+callbacks.signal.epoch=1",
            f"+callbacks.signal.signal_name={signal_name}",
            *overrides,
        ],
        run_dir,
    )


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_in_the_test_leaves_last_ckpt_as_the_fit_saved_it(
    signal_name: str, tiny_mnist: Path, tmp_path: Path
) -> None:
    """Before, Ctrl-C or SIGTERM in the test rewrote last.ckpt from the tested model: the best
    checkpoint's weights, no optimizer state, and the epoch one on."""
    cfg = interrupted(tiny_mnist, tmp_path, "test", signal_name)
    try:
        with pytest.raises(SystemExit):  # Lightning's sys.exit(1), or its SIGTERMException
            train(cfg)
    finally:  # Lightning ignores Ctrl-C once it has caught one
        signal.signal(signal.SIGINT, signal.default_int_handler)
    fit_left = tmp_path / "last-as-training-left-it.ckpt"
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert fit_left.read_bytes() == last.read_bytes()
    checkpoint = torch.load(last, weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 8)  # 256 images, batches of 32
    assert checkpoint["optimizer_states"]


def test_a_signal_in_fits_validation_leaves_a_last_ckpt_that_resumes_exactly(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """Before, Ctrl-C in validation saved a last.ckpt whose resume failed with a traceback
    (KeyError: 'train'); and a periodic save at an epoch's last batch, which SIGKILL in the
    validation after it leaves, resumed as if the rest of the run were done."""
    steps = [
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "callbacks.last_checkpoint.every_n_train_steps=4",  # steps 4, 8, 12, 16 of 8 an epoch
    ]
    cfg = interrupted(tiny_mnist, tmp_path, "val", "SIGINT", *steps)
    try:
        with pytest.raises(SystemExit):
            train(cfg)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert (tmp_path / "last-as-training-left-it.ckpt").read_bytes() == last.read_bytes()
    assert torch.load(last, weights_only=True)["global_step"] == 12  # not 16, the last batch's
    base = [f"data.data_dir={tiny_mnist}", *TINY_RUN, "print_config=false", *steps]
    resumed = train(compose_train([*base, "resume=true"], tmp_path))
    assert resumed == train(compose_train(base, tmp_path / "uninterrupted"))
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["epochs"] == 2


def test_a_sweep_folder_name_is_kept_short_and_distinct() -> None:
    """A name past Linux's 255 bytes failed the whole sweep: OSError: File name too long."""
    assert folder_name("model.beta-4+model.prior-vamp") == "model.beta-4+model.prior-vamp"
    assert folder_name("model/prior-vamp") == "model.prior-vamp"  # not a nested folder
    same_start = "+".join(f"model.setting_{i}-{i}" for i in range(40))  # about 800 bytes
    first, second = folder_name(same_start + "+seed-0"), folder_name(same_start + "+seed-1")
    shortened = KEPT_BYTES + 9  # "-" and 8 hex digits
    assert first != second and first[:KEPT_BYTES] == second[:KEPT_BYTES] == same_start[:KEPT_BYTES]
    assert len(first.encode()) == len(second.encode()) == shortened < 255 - len("99999_")
    assert folder_name(same_start) == folder_name(same_start)  # the same run, the same folder
    # a character of several bytes is kept whole or left out, never cut
    wide = folder_name("model.note-" + "é" * 200)
    assert wide.startswith("model.note-é") and len(wide.encode()) <= shortened
    assert wide.encode().decode() == wide


@pytest.mark.slow
def test_a_sweep_with_many_overrides_runs(tiny_mnist: Path, tmp_path: Path) -> None:
    longer = [
        "model.kl_warmup_epochs=0",
        "model.iw_samples=1",
        "trainer.deterministic=false",
        "trainer.gradient_clip_val=null",
        "model.likelihood._target_=vaelab.likelihoods.Bernoulli",
    ]
    result = run_train(
        "-m",
        f"hydra.sweep.dir={tmp_path}",
        f"data.data_dir={tiny_mnist}",
        *TINY_RUN,
        *longer,
        "print_config=false",
        "seed=0,1",
    )
    assert result.returncode == 0, result.stderr
    folders = sorted(path.name for path in tmp_path.iterdir() if path.is_dir())
    assert len(folders) == 2 and folders[0][2:] != folders[1][2:]  # "0_...", "1_..."
    assert all(len(name.encode()) == len("0_") + KEPT_BYTES + 9 for name in folders)  # shortened
    for folder in folders:
        summary = json.loads((tmp_path / folder / "metrics.json").read_text())
        assert summary["status"] == "completed"


@pytest.mark.parametrize(
    "overrides,message",
    [
        # Each was a NotADirectoryError or FileNotFoundError traceback, as the logger was built,
        (["logger=csv", "logger.save_dir={file}"], r"^logger.save_dir=\S+a-file cannot be"),
        (["logger.save_dir=/proc/nope"], r"^logger.save_dir=/proc/nope cannot be written: /proc "),
        (["logger=many", "logger.csv.save_dir={file}/x"], r"^logger.csv.save_dir=\S+a-file/x "),
        (["logger=mlflow", "logger.artifact_location=/proc/x"], r"^logger.artifact_location="),
        (
            ["logger=mlflow", "logger.tracking_uri=sqlite:////proc/x/m.db"],
            r"^logger.tracking_uri=sqlite:////proc/x/m.db cannot be written: /proc is not",
        ),
        # and W&B wrote to /tmp/wandb instead, without a word.
        (["logger=wandb", "logger.save_dir={file}"], r"a-file is a file; choose another folder$"),
    ],
)
def test_a_logger_folder_that_cannot_be_written(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    for package in ("mlflow", "wandb"):
        if f"logger={package}" in overrides:
            pytest.importorskip(package)  # the dev extra has it; a bare GPU machine may not
    (tmp_path / "a-file").touch()
    given = [o.format(file=tmp_path / "a-file") for o in overrides]
    cfg = compose_train(["data.data_dir=unused", *given], tmp_path / "run")
    with pytest.raises(UserError, match=message):
        check_run(cfg)
    check_run(compose_train(["logger=many"], tmp_path / "run"))  # the run folder's are fine


@pytest.mark.parametrize(
    "optimizer,value",
    [("torch.optim.SGD", 2.0), ("torch.optim.SGD", 1.0), ("torch.optim.RMSprop", 1.5)],
)
def test_a_momentum_of_one_or_more_is_refused(optimizer: str, value: float) -> None:
    """torch takes it, and the run trained on and diverged."""
    spec = {"_target_": optimizer, "momentum": value}
    with pytest.raises(UserError, match=rf"^optimizer.momentum={value} is invalid: use 0 <="):
        VAEModule(latent_size=2, optimizer=spec)
    VAEModule(latent_size=2, optimizer={**spec, "momentum": 0.9})  # the usual value builds


def test_the_command_line_names_a_bad_momentum(tmp_path: Path) -> None:
    cfg = compose_train(["model/optimizer=sgd", "model.optimizer.momentum=2"], tmp_path)
    with pytest.raises(UserError, match=r"^model.optimizer.momentum=2 is invalid: use 0 <="):
        build(cfg.model, "model")


def hydra_config(*overrides: str) -> DictConfig:
    """The `hydra` node of the config that `python train.py -m OVERRIDES` composes."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", list(overrides), return_hydra_config=True).hydra


@pytest.mark.parametrize(
    "overrides,message",
    [
        # a ValueError traceback from joblib,
        (
            ["hydra/launcher=cpu_parallel", "hydra.launcher.n_jobs=0"],
            "hydra.launcher.n_jobs=0 is invalid: use 1 or more jobs at once, or -1 for one per",
        ),
        # "No trials are completed yet" from Optuna, after no trial ran,
        (["hparams_search=optuna", "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 is"),
        (["hparams_search=optuna", "hydra.sweeper.n_trials=-3"], "hydra.sweeper.n_trials=-3 "),
        # and a ZeroDivisionError from Hydra's Optuna sweeper, after no trial ran.
        (["hparams_search=optuna", "hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0 is"),
    ],
)
def test_sweep_settings_that_would_end_in_a_traceback(overrides: list[str], message: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")  # the sweep extra
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    with pytest.raises(UserError, match=f"^{message}"):
        check_sweep(hydra_config(*overrides))
    check_sweep(hydra_config("hydra/launcher=cpu_parallel", "hparams_search=optuna"))  # defaults


def job_end(check: OutputCheck, hydra: DictConfig, status: JobStatus, value: object) -> None:
    job = JobReturn(status=status, _return_value=value)
    check.on_job_end(config=OmegaConf.create({"hydra": hydra}), job_return=job)


def test_an_optuna_search_whose_every_trial_failed_ends_in_one_line() -> None:
    """Before, Optuna's ValueError traceback: "No trials are completed yet"."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    hydra = hydra_config("hparams_search=optuna", "hydra.sweeper.n_trials=2")
    check = OutputCheck()
    check.on_multirun_start(config=OmegaConf.create({"hydra": hydra}))
    job_end(check, hydra, JobStatus.FAILED, UserError("model.latent_size=0 is invalid"))
    with pytest.raises(SystemExit, match=r"^every one of the 2 trials failed, .* the first fai"):
        job_end(check, hydra, JobStatus.FAILED, ValueError("other"))
    # one completed trial, and Optuna has a best one: the search ends as usual
    check.on_multirun_start(config=OmegaConf.create({"hydra": hydra}))
    job_end(check, hydra, JobStatus.COMPLETED, 1.0)
    job_end(check, hydra, JobStatus.FAILED, ValueError("one"))


@pytest.mark.slow
def test_a_sweep_refused_at_its_start_and_one_whose_trials_all_failed(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    refused = run_train(
        "-m",
        "hydra/launcher=cpu_parallel",
        "hydra.launcher.n_jobs=0",
        f"hydra.sweep.dir={tmp_path / 'refused'}",
        f"data.data_dir={tiny_mnist}",
        *TINY_RUN,
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().endswith("use 1 or more jobs at once, or -1 for one per CPU core")
    failed = run_train(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={tmp_path / 'failed'}",
        f"data.data_dir={tiny_mnist}",
        *[o for o in TINY_RUN if not o.startswith("model.")],
        "hydra.sweeper.params={model.latent_size: 'choice(0)', model.lr: 'choice(0.001)'}",
    )
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert (
        failed.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "every one of the 2 trials failed, so the search has no best parameters; the first "
            "failed with: model.latent_size=0 is invalid"
        )
    )


@pytest.mark.parametrize(
    "error,named",
    [
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                "memory: you tried to allocate 1600000000000 bytes. Error code 12"
            ),
            "out of memory (tried to allocate 1490.1 GiB): reduce model.latent_size, the hidden",
        ),
        (
            torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
                "139.8 GiB of which 1.2 GiB is free.\nOf the allocated memory ..."
            ),
            "out of memory (tried to allocate 20.0 GiB): reduce model.latent_size, the hidden",
        ),
    ],
)
def test_out_of_memory_is_one_line_naming_the_sizes(error: RuntimeError, named: str) -> None:
    message = str(out_of_memory(error))
    assert message.startswith(named) and "\n" not in message
    assert all(key in message for key in ("num_components", "iw_samples", "data.batch_size"))
    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


# Where the kernel grants any allocation (vm.overcommit_memory=1), these would really take the
# memory; elsewhere an allocation larger than the machine's memory (and these are terabytes) is
# refused at once.
OVERCOMMIT = Path("/proc/sys/vm/overcommit_memory")
refused_at_once = pytest.mark.skipif(
    not OVERCOMMIT.exists() or OVERCOMMIT.read_text().strip() == "1",
    reason="an allocation of terabytes may be granted here",
)


@refused_at_once
def test_a_model_too_large_for_memory_is_named_when_built(tmp_path: Path) -> None:
    """Before, Hydra's 3-line "Error in call to target" with the allocator's RuntimeError."""
    cfg = compose_train(["model.latent_size=10000000000"], tmp_path)  # weights of 16 TB
    with pytest.raises(
        UserError, match=r"^model: out of memory \(tried to allocate 14901\.2 GiB\)"
    ):
        build(cfg.model, "model")


@refused_at_once
def test_a_batch_too_large_for_memory_is_named_in_training(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """Before, a RuntimeError traceback from the first training step."""
    overrides = [f"data.data_dir={tiny_mnist}", *TINY_RUN, "print_config=false"]
    cfg = compose_train([*overrides, "model.iw_samples=100000000000"], tmp_path)  # noise of 51 TB
    with pytest.raises(UserError, match=r"^out of memory \(tried to allocate .*model.iw_samples"):
        train(cfg)
