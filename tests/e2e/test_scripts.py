"""End to end: `python scripts/evaluate.py` and `python scripts/visualize.py` on a tiny run."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from vaelab.data import MNISTDataModule
from vaelab.datasets import IDX_FILES
from vaelab.module import VAEModule

from ..conftest import TINY_RUN, TINY_TEST, read_evaluation, read_events, run_script, run_train

pytestmark = pytest.mark.slow  # every test runs train.py or a script
TINY_DATA = {"val_size": 64, "batch_size": 32, "eval_batch_size": 64}  # as TINY_RUN has them

METRICS = {"test/loss", "test/bpd", "test/recon", "test/kl", "test/nll_iw", "test/nll_iw_bpd"}
METRICS |= {"test/nll_iw_se", "test/active_units"}


@pytest.fixture(scope="module")
def run_dir(tiny_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-epoch run with a 2-D latent on dynamically binarized tiny data."""
    run_dir = tmp_path_factory.mktemp("run")
    result = run_train(
        f"data.data_dir={tiny_mnist}",
        *TINY_RUN,
        "trainer.max_epochs=2",
        "model.latent_size=2",
        "data.binarize=dynamic",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture(scope="module")
def evaluations(run_dir: Path, tiny_mnist: Path) -> list[tuple[dict, str]]:
    """The training's metrics.json, the evaluation kept in evaluations/ and the printed table
    after evaluating the best checkpoint twice, named once by its run folder and once by its
    path, and its data folder by both its names."""
    (best,) = (run_dir / "checkpoints").glob("epoch*.ckpt")
    results = []
    # data.data_dir, as training names it, and data_dir, its old name, still accepted
    for name, data in ((f"run_dir={run_dir}", "data.data_dir"), (f"ckpt_path={best}", "data_dir")):
        result = run_script("evaluate", name, f"{data}={tiny_mnist}", "iw_samples=20")
        assert result.returncode == 0, result.stderr
        summary = json.loads((run_dir / "metrics.json").read_text())
        results.append((summary, read_evaluation(run_dir), result.stdout))
    return results


def test_evaluate_reports_the_test_metrics(evaluations: list, run_dir: Path) -> None:
    summary, evaluation, table = evaluations[0]
    assert summary["status"] == "completed" and "test/loss" in summary["metrics"]  # training's
    assert Path(evaluation["checkpoint"]).name.startswith("epoch")  # the best, not last.ckpt
    assert evaluation["binarize"] == "dynamic"  # the run's data settings
    assert (evaluation["iw_samples"], evaluation["test_images"]) == (20, TINY_TEST)
    metrics = evaluation["metrics"]
    assert set(metrics) == METRICS
    assert metrics["test/loss"] == pytest.approx(metrics["test/recon"] + metrics["test/kl"])
    assert 0 < metrics["test/nll_iw"] <= metrics["test/loss"] < 784 * math.log(2)
    assert metrics["test/nll_iw_bpd"] == pytest.approx(metrics["test/nll_iw"] / (784 * math.log(2)))
    for name in METRICS:
        assert name in table
    assert f"{metrics['test/nll_iw']:.3f}" in table
    logged = read_events(run_dir).Scalars("test/nll_iw")  # one point per evaluation
    assert [event.value for event in logged] == pytest.approx([metrics["test/nll_iw"]] * 2)
    assert {event.step for event in logged} == {evaluation["global_step"]} != {0}


def test_the_iw_estimate_and_its_standard_error_computed_directly(
    evaluations: list, run_dir: Path, tiny_mnist: Path
) -> None:
    """The same draws, in the same order (batches of 100 images, one generator seeded 0),
    on the device that evaluate.py chose (device=auto: a GPU if there is one), give the same
    per-image estimates: their mean and standard error are evaluate.py's."""
    metrics = evaluations[0][1]["metrics"]
    (best,) = (run_dir / "checkpoints").glob("epoch*.ckpt")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU's sums differ in the 9th digit
    model = VAEModule.load_from_checkpoint(best, map_location=device).eval()
    data = MNISTDataModule(str(tiny_mnist), **{**TINY_DATA, "binarize": "dynamic"})
    data.setup("test")
    generator = torch.Generator().manual_seed(0)
    nll = torch.cat(
        [
            -model.log_likelihood(x.to(device), 20, 100, generator).double().cpu()
            for x in data.test_images.split(100)
        ]
    )  # (160,)
    assert metrics["test/nll_iw"] == pytest.approx(nll.mean().item(), rel=1e-9)
    se = nll.std().item() / math.sqrt(len(nll))  # sample standard deviation over sqrt(N)
    assert metrics["test/nll_iw_se"] == pytest.approx(se, rel=1e-9) and se > 0
    with torch.no_grad():
        means = model.encode(data.test_images.to(device))[0].cpu()  # (160, 2)
    assert metrics["test/active_units"] == int((means.var(dim=0) > 0.01).sum())


def test_two_evaluations_agree_exactly(evaluations: list) -> None:
    (_, first, _), (_, second, _) = evaluations
    assert first["metrics"] == second["metrics"]
    assert first["checkpoint"] == second["checkpoint"]


def test_visualize_writes_the_pictures(run_dir: Path, tiny_mnist: Path) -> None:
    last = run_dir / "checkpoints" / "last.ckpt"
    result = run_script("visualize", f"ckpt_path={last}", f"data_dir={tiny_mnist}")
    assert result.returncode == 0, result.stderr
    figures = run_dir / "figures"
    sizes = {path.stem: Image.open(path).size for path in figures.glob("*.png")}
    assert set(sizes) == {
        "reconstructions",
        "samples",
        "interpolations",
        "traversals",
        "manifold",
        "latent_means",
    }
    cell = 28 + 2  # make_grid pads by 2 pixels
    assert sizes["reconstructions"] == (8 * cell + 2, 8 * cell + 2)  # 4 pairs of rows of 8
    assert sizes["traversals"] == (11 * cell + 2, 2 * cell + 2)  # one row per latent dimension
    assert sizes["manifold"] == (20 * cell + 2, 20 * cell + 2)
    events = read_events(run_dir)
    assert {"test/samples", "test/manifold", "test/latent_means"} <= set(events.Tags()["images"])
    assert "val/interpolations" in events.Tags()["images"]  # logged during training
    (embedding,) = run_dir.glob("*/test_latent_means")
    assert len((embedding / "metadata.tsv").read_text().splitlines()) == TINY_TEST
    assert (run_dir / "projector_config.pbtxt").is_file()


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("evaluate", [], "give exactly one of ckpt_path=PATH"),
        ("evaluate", ["ckpt_path=a.ckpt", "run_dir=."], "got both"),
        ("evaluate", ["ckpt_path=missing.ckpt"], "ckpt_path=missing.ckpt: there is no such file"),
        ("evaluate", ["run_dir=."], "should hold one best checkpoint checkpoints/epoch*.ckpt"),
        ("evaluate", ["ckpt_path=notes.ckpt", "iw_samples=0"], "iw_samples=0 is invalid"),
        ("evaluate", ["iw_sample=5"], "Could not override 'iw_sample'"),
        ("visualize", ["run_dir=nowhere"], "run_dir=nowhere: there is no such folder"),
    ],
)
def test_mistakes_are_one_clear_message(
    script: str, args: list[str], message: str, tmp_path: Path
) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("")  # no best checkpoint
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    result = run_script(script, *args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "notes.ckpt"]


@pytest.mark.parametrize("script", ["evaluate", "visualize"])
def test_missing_data_is_the_message_training_gives(
    script: str, run_dir: Path, tmp_path: Path
) -> None:
    nowhere = tmp_path / "nothing"
    result = run_script(script, f"run_dir={run_dir}", f"data.data_dir={nowhere}")
    trained = run_train(f"data.data_dir={nowhere}", cwd=tmp_path)
    message = f"MNIST was not found in {nowhere / 'MNIST' / 'raw'} (download failed: "
    for output in (result.stderr, trained.stderr):
        assert message in output and "data.data_dir=" in output and "Traceback" not in output
        assert all(name in output for name in IDX_FILES)


@pytest.mark.slow
def test_each_checkpoint_keeps_its_own_evaluation(
    evaluations: list, run_dir: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    """Evaluating another checkpoint of the run adds its record beside the best one's, and
    leaves the training's metrics.json as training wrote it."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    training = (copy / "metrics.json").read_text()
    (best,) = (copy / "evaluations").glob("epoch*.json")
    kept = best.read_text()
    last = copy / "checkpoints" / "last.ckpt"
    result = run_script(
        "evaluate", f"ckpt_path={last}", f"data.data_dir={tiny_mnist}", "iw_samples=3"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (copy / "evaluations").iterdir()) == sorted(
        [best.name, "last.json"]
    )
    assert best.read_text() == kept and (copy / "metrics.json").read_text() == training
    record = json.loads((copy / "evaluations" / "last.json").read_text())
    assert (record["checkpoint"], record["iw_samples"]) == (str(last), 3)
