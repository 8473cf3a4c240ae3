"""Bad inputs at the command line: refused at once in one line, or, where they are fine
(a small validation batch), a run that completes with its checkpoints and pictures."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vaelab import UserError
from vaelab.pictures import pairs_grid
from vaelab.train import train

from ..conftest import (
    TINY_RUN,
    compose_train,
    exploding_at,
    read_events,
    run_script,
    run_train,
    write_arrays,
    write_idx,
)

pytestmark = pytest.mark.slow  # runs of train.py and scripts/summarize.py

TENSORS = ["data=tensors", "data.test_size=64"]  # with tiny_npz's 320 images


def one_line(result: subprocess.CompletedProcess, message: str) -> None:
    """The run failed, and said `message` on a line of its own, with no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert any(line.startswith(message) for line in result.stderr.splitlines()), result.stderr


# Pictures of whatever the first validation batch holds.


def test_pairs_grid_fills_the_last_row_with_blanks() -> None:
    top, bottom = torch.ones(3, 1, 28, 28), torch.full((3, 1, 28, 28), 0.5)
    grid = pairs_grid(top, bottom, nrow=2)  # rows: top 0-1, bottom 0-1, top 2 + a blank, ...
    assert grid.shape == (3, 4 * 30 + 2, 2 * 30 + 2)
    centres = grid[0, 2 + 14 :: 30, 2 + 14 :: 30]  # the centre pixel of each image
    assert centres.tolist() == [[1, 1], [0.5, 0.5], [1, 0], [0.5, 0]]
    assert pairs_grid(top[:1], bottom[:1], nrow=8).shape == (3, 2 * 30 + 2, 30 + 2)  # 1 column


@pytest.mark.parametrize(
    "overrides,images,columns,interpolations",
    [
        (["data.eval_batch_size=20"], 20, 8, True),  # 20 of num_images=32, not a multiple of 8
        (["data.val_size=20", "model=cvae"], 20, 8, True),  # conditional: pairs of a class
        ([*TENSORS, "data.val_size=1"], 1, 1, False),  # one image: nothing to interpolate
    ],
)
def test_a_small_validation_batch_gets_its_pictures_and_checkpoints(
    overrides: list[str],
    images: int,
    columns: int,
    interpolations: bool,
    tiny_mnist: Path,
    tiny_npz: Path,
    tmp_path: Path,
) -> None:
    data = f"data.path={tiny_npz}" if "data=tensors" in overrides else f"data.data_dir={tiny_mnist}"
    result = run_train(data, *TINY_RUN, *overrides, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    saved = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert len(saved) == 2 and saved[0].startswith("epoch000") and saved[1] == "last.ckpt"
    events = read_events(tmp_path)
    (reconstructions,) = events.Images("val/reconstructions")
    rows = -(-images // columns) * 2  # each row of images above its reconstructions
    cell = (20 if "data=tensors" in overrides else 28) + 2  # an image and its padding
    assert (reconstructions.height, reconstructions.width) == (rows * cell + 2, columns * cell + 2)
    assert len(events.Images("val/samples")) == 1
    assert ("val/interpolations" in events.Tags()["images"]) == interpolations


# Settings under which no best checkpoint would be kept, and bad seeds, refused
# before any data is read (the data folder does not exist).


REFUSED = {
    "trainer.max_epochs=0": "trainer.max_epochs=0 is invalid: use 1 or more (or -1",
    "trainer.max_steps=0": "trainer.max_steps=0 is invalid: use 1 or more, or -1",
    "trainer.limit_train_batches=0": "trainer.limit_train_batches=0 is invalid: no training",
    "trainer.limit_val_batches=0": "trainer.limit_val_batches=0 is invalid: no validation",
    "trainer.check_val_every_n_epoch=5": (  # with TINY_RUN's max_epochs=1
        "trainer.check_val_every_n_epoch=5 is invalid with trainer.max_epochs=1: no "
        "validation would run, so no best checkpoint would be kept; use at most 1"
    ),
    "seed=abc": "seed='abc' is invalid: use an integer from 0 to 4294967295, or null",
    "seed=-1": "seed=-1 is invalid: use an integer from 0 to 4294967295",
    "seed=1.5": "seed=1.5 is invalid: use an integer from 0 to 4294967295",
    "seed=4294967296": "seed=4294967296 is invalid: use an integer from 0 to 4294967295",
    "model.beta=inf": "model.beta=inf is invalid: use a finite number",
    "model.lr=nan": "model.lr=nan is invalid: use a finite number",
    "model.optimizer.weight_decay=inf": "model.optimizer.weight_decay=inf is invalid",
    "callbacks.best_checkpoint=null": (
        "callbacks: no ModelCheckpoint monitors val/loss, so no best checkpoint would be "
        "kept for the test; keep callbacks.best_checkpoint"
    ),
}


@pytest.mark.parametrize("override", REFUSED)
def test_a_run_that_would_keep_no_best_checkpoint_is_refused_at_once(
    override: str, tmp_path: Path
) -> None:
    overrides = [f"data.data_dir={tmp_path / 'no-data'}", *TINY_RUN, override]
    with pytest.raises(UserError) as error:
        train(compose_train(overrides, tmp_path))
    assert str(error.value).startswith(REFUSED[override])
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(  # one of each kind, as the command line shows them
    "override",
    [
        "trainer.check_val_every_n_epoch=5",
        "seed=abc",
        "model.beta=inf",
        "callbacks.best_checkpoint=null",
    ],
)
def test_the_command_line_refuses_them_in_one_line(override: str, tmp_path: Path) -> None:
    no_data = f"data.data_dir={tmp_path / 'no-data'}"
    result = run_train(no_data, *TINY_RUN, override, f"hydra.run.dir={tmp_path / 'run'}")
    one_line(result, REFUSED[override])
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_training_that_ends_before_any_validation_says_so(tiny_mnist: Path, tmp_path: Path) -> None:
    # max_steps ends the first epoch of 8 steps early, before its validation
    result = run_train(
        f"data.data_dir={tiny_mnist}", *TINY_RUN, "trainer.max_steps=3", f"hydra.run.dir={tmp_path}"
    )
    one_line(result, "no validation ran in 3 training steps, so no best checkpoint was kept;")
    assert "trainer.max_steps" in result.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"


# Folders that cannot be written: a file where a folder must go (as root, which every
# folder lets write, this is the only way to make one), and a read-only folder.


@pytest.mark.parametrize("sweep", [False, True])
def test_a_run_folder_that_cannot_be_made_is_named(
    sweep: bool, tiny_mnist: Path, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    folder = tmp_path / "notes.txt" / "run"
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    args = ["-m", "seed=1,2"] if sweep else []
    result = run_train(*args, f"data.data_dir={tiny_mnist}", *TINY_RUN, f"{key}={folder}")
    one_line(result, f"{key}={folder} cannot be written: {tmp_path / 'notes.txt'} is a file;")


@pytest.mark.parametrize("how", ["file", "read-only"])
def test_a_checkpoint_folder_that_cannot_be_written_is_named_before_training(
    how: str, tiny_mnist: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"  # a file, or a folder that may not be written
    if how == "file":
        blocker.write_text("a file, not a folder")
    else:
        if os.geteuid() == 0:
            pytest.skip("root may write in a read-only folder")
        blocker.mkdir(mode=0o555)
    checkpoints = blocker / "checkpoints"
    result = run_train(
        f"data.data_dir={tiny_mnist}",
        *TINY_RUN,
        f"hydra.run.dir={tmp_path / 'run'}",
        f"callbacks.best_checkpoint.dirpath={checkpoints}",
    )
    problem = "is a file" if how == "file" else "is not writable"
    message = f"callbacks.best_checkpoint.dirpath={checkpoints} cannot be written: "
    one_line(result, f"{message}{blocker} {problem}; choose another folder")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


# Labels outside the classes the data states.


def test_an_absurd_label_in_a_tensors_file_is_named(tiny_npz: Path, tmp_path: Path) -> None:
    with np.load(tiny_npz) as file:
        images, labels = file["images"], file["labels"].astype(np.int64)
    labels[5] = 10**9  # model=cvae would try a one-hot of a billion classes
    path = write_arrays(tmp_path / "labels.npz", images=images, labels=labels)
    result = run_train(
        *TINY_RUN, *TENSORS, f"data.path={path}", "model=cvae", f"hydra.run.dir={tmp_path / 'r'}"
    )
    one_line(result, f"data.path: {path} has the label 1000000000, which would make 1000000001")
    assert "use class indices 0 to K - 1" in result.stderr


@pytest.fixture
def data_copy(tiny_mnist: Path, tmp_path: Path) -> Path:
    """A copy of the tiny data that a test may damage."""
    return Path(shutil.copytree(tiny_mnist, tmp_path / "data"))


def test_a_label_outside_the_sets_classes_is_named(data_copy: Path, tmp_path: Path) -> None:
    labels_file = data_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels = np.frombuffer(labels_file.read_bytes()[8:], dtype=np.uint8).copy()
    labels[3] = 200
    write_idx(labels_file, labels)
    result = run_train(
        f"data.data_dir={data_copy}", *TINY_RUN, "model=cvae", f"hydra.run.dir={tmp_path / 'r'}"
    )
    one_line(result, f"{labels_file} is damaged or not the right file: it holds the label 200,")
    assert "where MNIST's are 0 to 9" in result.stderr


def test_a_missing_mnist_file_is_named(data_copy: Path, tmp_path: Path) -> None:
    raw = data_copy / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").unlink()
    result = run_train(f"data.data_dir={data_copy}", *TINY_RUN, f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"MNIST was not found in {raw} (" in result.stderr
    assert "; missing: t10k-labels-idx1-ubyte)" in result.stderr  # that one only
    assert "missing: t10k-labels-idx1-ubyte, " not in result.stderr


# A loss that is not finite from the first step is not the learning rate's doing.


def test_divergence_at_the_first_step_does_not_blame_the_learning_rate(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    result = run_train(
        f"data.data_dir={tiny_mnist}",
        *TINY_RUN,
        f"hydra.run.dir={tmp_path}",
        *exploding_at(0),
    )
    one_line(result, "the training loss was not finite at step 0, so training stopped.")
    assert "model.lr" not in result.stderr and "model.beta" in result.stderr
    assert "trainer.detect_anomaly=true" in result.stderr


# scripts/summarize.py on a folder that is not there, and on jobs that left odd metrics.json.


def test_summarize_names_a_missing_folder(tmp_path: Path) -> None:
    result = run_script("summarize", str(tmp_path / "nothing"))
    one_line(result, f"Error: {tmp_path / 'nothing'} is not a folder; give a sweep's")


def test_summarize_shows_damaged_and_evaluation_only_jobs_as_failed_rows(tmp_path: Path) -> None:
    """One job's bad metrics.json fails that row, not the summary of the sweep."""
    summaries = {
        "0_seed-0": {"status": "completed", "wall_seconds": 5.0, "best_val_loss": 100.0},
        "1_seed-1": '{"status": "completed", "wall_sec',  # cut short
        "2_seed-2": None,  # no metrics.json, only evaluate.py's record
    }
    for seed, (name, summary) in enumerate(summaries.items()):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}"]))
        if summary is None:
            (tmp_path / name / "evaluations").mkdir()
            evaluation = {"global_step": 8, "metrics": {"test/nll_iw": 99.0}}
            (tmp_path / name / "evaluations" / "last.json").write_text(json.dumps(evaluation))
            continue
        text = summary if isinstance(summary, str) else json.dumps(summary)
        (tmp_path / name / "metrics.json").write_text(text)
    result = run_script("summarize", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:4]}
    assert rows["0_seed-0"].split()[1] == "completed"
    damaged = tmp_path / "1_seed-1" / "metrics.json"
    assert (
        rows["1_seed-1"].split()[1] == "failed"
        and f"{damaged} is not readable JSON" in rows["1_seed-1"]
    )
    assert rows["2_seed-2"].split()[1] == "failed" and "no training summary" in rows["2_seed-2"]
    assert "99.00" in rows["2_seed-2"]  # its evaluation is shown
