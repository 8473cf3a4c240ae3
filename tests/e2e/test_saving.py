"""Saving: checkpoints written whole whatever kills the run, saves and schedules counted in
optimizer steps, and a run stopped by trainer.max_time resumed into the rest of its epoch."""

import json
import shutil
import signal
import uuid
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path

import pytest
import torch

from vaelab.resume import DivergenceError
from vaelab.train import build, train

from ..conftest import (
    RESUMABLE,
    TINY_RUN,
    compose_train,
    exploding_at,
    final_metrics,
    read_events,
    run_train,
)


@pytest.fixture
def tmpdir_elsewhere(tmp_path: Path) -> Iterator[Path]:
    """An empty folder for $TMPDIR, on another filesystem than the run's where there is one
    (/dev/shm, as on many clusters): Lightning's own saving then copies across."""
    shm = Path("/dev/shm")
    folder = shm / f"vaelab-test-{uuid.uuid4().hex}" if shm.is_dir() else tmp_path / "tmpdir"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def test_the_trainer_renames_each_checkpoint_into_place(tmp_path: Path) -> None:
    from vaelab.checkpoint_io import AtomicCheckpointIO

    trainer = build(compose_train([], tmp_path).trainer, "trainer")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    saver, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    saver.save_checkpoint({"global_step": 1}, path)
    (path.parent / "last.ckpt.tmp-999999").write_bytes(b"left by a killed process")
    with pytest.raises(AttributeError, match="pickle"):  # fails in the middle of the write
        saver.save_checkpoint({"global_step": 2, "unpicklable": lambda: None}, path)
    assert torch.load(path, weights_only=True) == {"global_step": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def kill_during_save(at: str) -> list[str]:
    return [
        "+callbacks.kill._target_=tests.helpers.KillDuringSave",
        "+callbacks.kill.nth=2",
        f"+callbacks.kill.at={at}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("at", ["open", "close"])
def test_a_kill_while_saving_leaves_the_old_checkpoint_whole(
    at: str, uninterrupted: Path, tiny_mnist: Path, tmp_path: Path, tmpdir_elsewhere: Path
) -> None:
    """Killed as the second save (step 8) opens its file, or once it has written it: last.ckpt
    is still step 4's, $TMPDIR holds nothing, and the resumed run ends as an uninterrupted one."""
    env = {"TMPDIR": str(tmpdir_elsewhere)}
    args = [f"data.data_dir={tiny_mnist}", *RESUMABLE, f"hydra.run.dir={tmp_path}"]
    first = run_train(*args, *kill_during_save(at), env=env)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert files_under(tmpdir_elsewhere) == []
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
    resumed = run_train(*args, "resume=true", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert final_metrics(tmp_path) == final_metrics(uninterrupted)
    assert not list((tmp_path / "checkpoints").glob("*.tmp-*"))  # the killed save's, removed
    assert files_under(tmpdir_elsewhere) == []


# 256 training images in batches of 24: 11 batches an epoch, the last of 16 images.
ACCUMULATING = [
    *TINY_RUN,
    "data.batch_size=24",
    "trainer.max_epochs=3",
    "callbacks.last_checkpoint.every_n_train_steps=2",
]


@pytest.mark.parametrize("accumulate", [1, 4])
def test_accumulated_batches_count_as_one_step(
    accumulate: int, tiny_mnist: Path, tmp_path: Path
) -> None:
    """With 4 batches to a step (3 steps an epoch, the last of 3 batches) the KL warm-up still
    takes 2 epochs, with one weight per step, and last.ckpt is written once per 2 steps."""
    cfg = compose_train(
        [
            f"data.data_dir={tiny_mnist}",
            *ACCUMULATING,
            f"trainer.accumulate_grad_batches={accumulate}",
            "model.kl_warmup_epochs=2",
            "+callbacks.schedule._target_=tests.helpers.RecordSchedule",
            f"+callbacks.schedule.folder={tmp_path}",
        ],
        tmp_path,
    )
    train(cfg)
    schedule = json.loads((tmp_path / "schedule.json").read_text())
    steps = {1: 11, 4: 3}[accumulate]  # optimizer steps an epoch
    # every 2 steps, but not at an epoch's last batch: the save after its validation does
    periodic = [step for step in range(2, 3 * steps + 1, 2) if step % steps]
    epoch_ends = [steps, 2 * steps, 3 * steps]
    assert [step for name, step in schedule["saves"] if name == "last.ckpt"] == sorted(
        periodic + epoch_ends
    )
    logged = [event.value for event in read_events(tmp_path).Scalars("train/kl_weight")]
    assert logged == [0.5, 1.0, 1.0]  # at each epoch's end
    # The batches of one optimizer step (same epoch and global step) share one weight.
    windows = [list(group) for _, group in groupby(schedule["batches"], key=lambda b: b[:2])]
    sizes = {1: [1] * 11, 4: [4, 4, 3]}[accumulate] * 3
    assert [len(window) for window in windows] == sizes
    assert all(len({weight for *_, weight in window}) == 1 for window in windows)
    first_of_epoch = [window[0][2] for window in windows if window[0][1] % steps == 0]
    assert first_of_epoch == [0.0, 0.5, 1.0]


def test_divergence_names_the_optimizer_step_with_accumulation(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """The loss turns to NaN from step 4 on, 4 batches to a step: step 4 is named."""
    cfg = compose_train(
        [
            f"data.data_dir={tiny_mnist}",
            *ACCUMULATING,
            "trainer.accumulate_grad_batches=4",
            *exploding_at(4),
        ],
        tmp_path,
    )
    with pytest.raises(DivergenceError, match="not finite at step 4,"):
        train(cfg)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4  # saved as step 4 ended, before the NaN batches
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


@pytest.mark.slow
def test_a_run_stopped_by_max_time_resumes_into_the_rest_of_its_epoch(
    uninterrupted: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    """Lightning's Timer stops the run after step 13, in the second epoch of 8 steps; resumed
    with no time limit, it ends where and as an uninterrupted run does."""
    args = [f"data.data_dir={tiny_mnist}", *RESUMABLE, f"hydra.run.dir={tmp_path}"]
    step_13_takes_2_hours = [
        "+callbacks.clock._target_=tests.helpers.ClockJumpAtStep",
        "+callbacks.clock.step=12",
        "+callbacks.clock.seconds=7200",
    ]
    first = run_train(*args, "trainer.max_time=00:01:00:00", *step_13_takes_2_hours)
    assert first.returncode == 0, first.stderr
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 13
    resumed = run_train(*args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    assert final_metrics(tmp_path) == final_metrics(uninterrupted)
    ours, theirs = (
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
        for d in (tmp_path, uninterrupted)
    )
    assert ours["global_step"] == theirs["global_step"] == 24
    assert all(torch.equal(ours["state_dict"][k], v) for k, v in theirs["state_dict"].items())

    def best(run_dir: Path) -> list[str]:
        return sorted(path.name for path in (run_dir / "checkpoints").glob("epoch*.ckpt"))

    assert best(tmp_path) == best(uninterrupted)  # the stop's validation left no other
