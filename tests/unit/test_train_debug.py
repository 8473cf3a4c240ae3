"""The debug= presets of conf/debug/: each runs on the tiny data and does what it says."""

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import lightning as L
import pytest

from vaelab.train import train

from ..conftest import TINY_RUN, compose_train, options, read_events

# The tiny run less its epoch count, which the presets set; eval batches of 16, so that val
# (64 images) has 4 batches and test (160) has 10, more than the presets run.
RUN = [o for o in TINY_RUN if not o.startswith("trainer.max_epochs")]
RUN += ["data.eval_batch_size=16", "+callbacks.record._target_=tests.unit.test_train_debug.Record"]

# What Record saw in the latest run: batches per stage, and each training epoch's images.
BATCHES: Counter[str] = Counter()
IMAGES: dict[int, list[float]] = defaultdict(list)


class Record(L.Callback):
    """Count the batches of each stage, and note each training epoch's images by their sums."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        BATCHES.clear()
        IMAGES.clear()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        BATCHES["train"] += 1
        IMAGES[trainer.current_epoch] += batch[0].flatten(1).sum(1).tolist()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        BATCHES["sanity" if trainer.sanity_checking else "val"] += 1

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        BATCHES["test"] += 1


def run(preset: str, data_dir: Path, run_dir: Path, *overrides: str) -> None:
    train(
        compose_train([f"debug={preset}", f"data.data_dir={data_dir}", *RUN, *overrides], run_dir)
    )


def epochs(run_dir: Path) -> int:
    return json.loads((run_dir / "metrics.json").read_text())["epochs"]


def test_the_presets_are_the_documented_ones() -> None:
    assert options("debug") == ["fdr", "limit", "overfit", "profiler"]


def test_fdr_runs_one_batch_of_each_stage(tiny_mnist: Path, tmp_path: Path) -> None:
    run("fdr", tiny_mnist, tmp_path)
    assert BATCHES == {"train": 1, "val": 1, "test": 1}  # and no sanity check
    assert epochs(tmp_path) == 1
    # the whole run, the best checkpoint's test included, with pictures of one row each
    events = read_events(tmp_path)
    assert "test/loss" in events.Tags()["scalars"]
    assert len(list((tmp_path / "checkpoints").glob("epoch000-*.ckpt"))) == 1
    assert [(image.height, image.width) for image in events.Images("val/samples")] == [(32, 242)]


def test_lightnings_fast_dev_run_completes_without_a_checkpoint(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """trainer.fast_dev_run=true saves no checkpoint: the run tests the weights it has."""
    overrides = [f"data.data_dir={tiny_mnist}", *RUN, "trainer.fast_dev_run=true"]
    train(compose_train(overrides, tmp_path))
    assert BATCHES == {"train": 1, "val": 1, "test": 1}
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["metrics"]["test/loss"] > 0
    assert not list(tmp_path.glob("checkpoints/*.ckpt"))


def test_limit_runs_a_few_batches_for_two_epochs(tiny_mnist: Path, tmp_path: Path) -> None:
    run("limit", tiny_mnist, tmp_path)
    # of 8 training, 4 val and 10 test batches: 5 and 2 a stage, 2 before training
    assert BATCHES == {"train": 2 * 5, "sanity": 2, "val": 2 * 2, "test": 2}
    assert epochs(tmp_path) == 2


def test_profiler_writes_its_report_into_the_run_folder(tiny_mnist: Path, tmp_path: Path) -> None:
    run("profiler", tiny_mnist, tmp_path)
    fit = (tmp_path / "fit-profile.txt").read_text()
    test = (tmp_path / "test-profile.txt").read_text()
    assert "FIT Profiler Report" in fit and "run_training_batch" in fit
    assert "TEST Profiler Report" in test and "[Strategy]SingleDeviceStrategy.test_step" in test
    assert BATCHES["train"] == 8  # a whole epoch


@pytest.mark.slow
def test_overfit_trains_on_two_batches_until_their_loss_falls_far(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    run("overfit", tiny_mnist, tmp_path)  # two batches of 32 tiny images
    assert len(IMAGES) == 200 and BATCHES["train"] == 400
    first = sorted(IMAGES[0])
    assert len(first) == 64 and all(sorted(seen) == first for seen in IMAGES.values())
    losses = [e.value for e in read_events(tmp_path).Scalars("train/loss")]
    # measured: 552 nats after the first epoch, 245 after the last (0.44 of it)
    assert losses[-1] < 0.5 * losses[0]
