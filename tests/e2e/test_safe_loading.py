"""Loading a checkpoint runs no code that the file names: evaluate.py, visualize.py,
`load_checkpoint` and `VAEModule.load_from_checkpoint` build only vaelab's parts and
DataModules, torch's optimizers and schedulers, and classes of modules the user trusts. And
files that do not fit (other weights, other data, NaN weights) are one line each."""

import json
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from vaelab import UserError
from vaelab.checkpoints import load_checkpoint
from vaelab.module import VAEModule

from ..conftest import ROOT, TINY_RUN, read_evaluation, readme_blocks, run_script, run_train

pytestmark = pytest.mark.slow  # a tiny training run, and scripts run as a user runs them


@pytest.fixture(scope="module")
def trained(tiny_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.ckpt of a one-epoch run on tiny MNIST."""
    run_dir = tmp_path_factory.mktemp("run")
    result = run_train(f"data.data_dir={tiny_mnist}", *TINY_RUN, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "checkpoints" / "last.ckpt"


def tampered(trained: Path, folder: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the trained checkpoint in folder/checkpoints/ (so folder is its run folder),
    its contents changed by `edit`; still plain data that torch.load(weights_only=True) reads."""
    checkpoint = torch.load(trained, weights_only=True)
    edit(checkpoint)
    path = folder / "checkpoints" / "tampered.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def planted(pwned: Path) -> dict[str, Any]:
    """A part config that, if built, runs a shell command creating `pwned`."""
    return {"_target_": "os.system", "command": f"touch {pwned}"}


def set_part(name: str, spec: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def edit(checkpoint: dict[str, Any]) -> None:
        checkpoint["hyper_parameters"][name] = spec

    return edit


def datamodule_runs(pwned: Path) -> Callable[[dict[str, Any]], None]:
    """The DataModule entry names subprocess.run, with arguments that create `pwned`."""

    def edit(checkpoint: dict[str, Any]) -> None:
        checkpoint["datamodule_target"] = "subprocess.run"
        checkpoint["datamodule_hyper_parameters"] = {"args": ["touch", str(pwned)]}

    return edit


def on_path(folder: Path) -> dict[str, str]:
    """The environment that puts `folder` first on the Python path."""
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    }


def one_line_error(result: Any) -> str:
    """The message of a script that failed with one line and no traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    hydra = ("Error executing job with overrides", "Set the environment variable HYDRA_FULL")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    message = [line for line in lines if not line.startswith(hydra)]  # Hydra's frame around it
    assert len(message) == 1, result.stderr[-3000:]
    return message[0]


def attacks(pwned: Path) -> dict[str, tuple[Callable[[dict[str, Any]], None], str]]:
    """Each tampering, with the target its refusal names."""
    return {
        "likelihood": (
            set_part("likelihood", planted(pwned)),
            "model.likelihood._target_='os.system'",
        ),
        # A prefix check would pass vaelab.train.instantiate, which is Hydra's instantiate:
        # it would build the nested os.system itself.
        "nested": (
            set_part(
                "likelihood", {"_target_": "vaelab.train.instantiate", "config": planted(pwned)}
            ),
            "model.likelihood._target_='vaelab.train.instantiate'",
        ),
        "optimizer": (
            set_part("optimizer", planted(pwned)),
            "model.optimizer._target_='os.system'",
        ),
        "datamodule": (datamodule_runs(pwned), "data._target_='subprocess.run'"),
    }


@pytest.mark.parametrize("attack", ["likelihood", "nested", "datamodule"])
@pytest.mark.parametrize("script", ["evaluate", "visualize"])
def test_the_scripts_refuse_a_planted_target(
    trained: Path, tiny_mnist: Path, tmp_path: Path, script: str, attack: str
) -> None:
    pwned = tmp_path / "PWNED"
    edit, named = attacks(pwned)[attack]
    path = tampered(trained, tmp_path, edit)
    args = ["iw_samples=2"] if script == "evaluate" else []
    result = run_script(script, f"ckpt_path={path}", f"data.data_dir={tiny_mnist}", *args)
    assert not pwned.exists()
    message = one_line_error(result)
    assert f"{path} names {named}, which loading does not import" in message
    assert "trust=[" in message  # how to trust it


@pytest.mark.parametrize("attack", ["likelihood", "nested", "optimizer"])
def test_load_from_checkpoint_refuses_a_planted_target(
    trained: Path, tmp_path: Path, attack: str
) -> None:
    pwned = tmp_path / "PWNED"
    edit, named = attacks(pwned)[attack]
    path = tampered(trained, tmp_path, edit)
    for load in (VAEModule.load_from_checkpoint, load_checkpoint):
        with pytest.raises(UserError, match=re.escape(f"{path} names {named}")):
            load(path)
        assert not pwned.exists()


def test_a_module_is_not_imported_before_it_is_trusted(trained: Path, tmp_path: Path) -> None:
    """Importing a module runs its code: an untrusted one is refused by its name alone."""
    pwned = tmp_path / "PWNED"
    (tmp_path / "evil_parts.py").write_text(f"import os\nos.system('touch {pwned}')\n")
    path = tampered(trained, tmp_path, set_part("prior", {"_target_": "evil_parts.Prior"}))
    result = run_script("evaluate", f"ckpt_path={path}", "iw_samples=2", env=on_path(tmp_path))
    assert not pwned.exists()
    assert "model.prior._target_='evil_parts.Prior'" in one_line_error(result)


@pytest.mark.parametrize(
    "spec,message",
    [
        # importable from vaelab's own modules, but not one of its parts
        ({"_target_": "vaelab.priors.draw_normal"}, "which is a function, not a class"),
        ({"_target_": "vaelab.priors.Tensor"}, "a class defined in torch"),
        ({"_target_": "vaelab.parts.importlib.import_module"}, "which loading does not import"),
        ({"_target_": "torch.optim.Adam"}, "which is not a torch.nn.Module of vaelab.networks"),
        # nested deeper, where nothing builds it: still refused
        (
            {"_target_": "vaelab.priors.StandardNormal", "extra": planted(Path("x"))},
            "model.prior.extra._target_='os.system'",
        ),
    ],
)
def test_only_classes_of_the_role_load(
    trained: Path, tmp_path: Path, spec: dict, message: str
) -> None:
    path = tampered(trained, tmp_path, set_part("prior", spec))
    with pytest.raises(UserError, match=re.escape(message)):
        VAEModule.load_from_checkpoint(path)


@pytest.fixture(scope="module")
def own_prior(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The README's own prior, written where PYTHONPATH can reach it: folder, module, class."""
    code = readme_blocks("Add your own prior")[0]
    folder = tmp_path_factory.mktemp("own")
    module = re.search(r"# (\w+)\.py", code).group(1)
    (folder / f"{module}.py").write_text(code)
    return folder, module, re.search(r"class (\w+)\(Prior\)", code).group(1)


def test_a_part_of_ones_own_loads_when_trusted(
    trained: Path,
    tiny_mnist: Path,
    tmp_path: Path,
    own_prior: tuple[Path, str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, module, class_name = own_prior
    # The standard normal has no weights, and neither has the Laplace prior: only its name changes.
    path = tampered(trained, tmp_path, set_part("prior", {"_target_": f"{module}.{class_name}"}))
    env = on_path(folder)
    args = ("evaluate", f"ckpt_path={path}", f"data.data_dir={tiny_mnist}", "iw_samples=2")
    message = one_line_error(run_script(*args, env=env))
    assert f"model.prior._target_='{module}.{class_name}'" in message
    assert f"pass trust=['{module}']" in message
    result = run_script(*args, f"trust=[{module}]", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_evaluation(tmp_path)["prior"] == class_name

    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(UserError, match=re.escape(f"trust=['{module}']")):
        VAEModule.load_from_checkpoint(path)
    model = VAEModule.load_from_checkpoint(path, trust=[module])
    assert type(model.prior).__name__ == class_name
    assert type(load_checkpoint(path, trust=[module])[0].prior).__name__ == class_name
    with pytest.raises(UserError, match=r"trust='my_priors' is invalid: give a list"):
        VAEModule.load_from_checkpoint(path, trust="my_priors")


def test_the_readme_shows_how_to_trust_ones_own_prior() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### Add your own prior\n")
    section = readme[start : readme.index("\n## ", start)]
    commands = readme_blocks("Add your own prior")[2]
    assert re.search(r"scripts/evaluate\.py .*trust=\[my_priors\]", commands)
    assert re.search(r"scripts/visualize\.py .*trust=\[my_priors\]", commands)
    assert re.search(r"load_from_checkpoint\(.*trust=\[\"my_priors\"\]", section)


class Shell:
    """An object whose unpickling runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_pickle_that_holds_code_is_refused_as_such(tmp_path: Path, writer: str) -> None:
    pwned = tmp_path / "PWNED"
    path = tmp_path / "checkpoints" / "evil.ckpt"
    path.parent.mkdir()
    contents = {"state_dict": {}, "hyper_parameters": {}, "x": Shell(f"touch {pwned}")}
    if writer == "torch.save":
        torch.save(contents, path)
    else:
        path.write_bytes(pickle.dumps(contents, protocol=2))
    message = one_line_error(run_script("evaluate", f"ckpt_path={path}", "iw_samples=2"))
    assert (
        f"{path} is not a checkpoint of this project: it was refused because it holds code"
        in message
    )
    assert "system" in message and "weights_only" not in message
    assert not pwned.exists()


def test_weights_that_do_not_fit_the_hyperparameters(trained: Path, tmp_path: Path) -> None:
    def edit(checkpoint: dict[str, Any]) -> None:
        checkpoint["hyper_parameters"]["latent_size"] = 5  # the file's weights are for 4

    path = tampered(trained, tmp_path, edit)
    for script in ("evaluate", "visualize"):
        message = one_line_error(run_script(script, f"ckpt_path={path}"))
        assert f"{path} holds weights that do not fit its own hyperparameters" in message
        assert re.search(r"has shape \(\d+, 4\), the model's \(\d+, 5\)", message)


def test_data_of_another_shape_is_one_line(
    trained: Path, tiny_pt: Path, tiny_npz: Path, tmp_path: Path
) -> None:
    """A run on a file of 1 x 28 x 28 images, evaluated on 3 x 16 x 16 colour images."""

    def on_a_file(checkpoint: dict[str, Any]) -> None:
        checkpoint["datamodule_target"] = "vaelab.data.TensorDataModule"
        checkpoint["datamodule_hyper_parameters"] = {
            "path": str(tiny_npz),
            "batch_size": 32,
            "eval_batch_size": 64,
            "val_size": 20,
            "test_size": 20,
            "seed": 0,
            "binarize": "none",
        }

    path = tampered(trained, tmp_path, on_a_file)
    for script, args in (("evaluate", ["iw_samples=2"]), ("visualize", [])):
        result = run_script(script, f"ckpt_path={path}", f"data.path={tiny_pt}", *args)
        message = one_line_error(result)
        assert f"data.path={tiny_pt} holds images of shape (3, 16, 16)" in message
        assert "trained on (1, 28, 28)" in message


def test_nan_weights_evaluate_to_null_and_say_so(
    trained: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    def poison(checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"]["encoder.mean.weight"][0, 0] = float("nan")

    path = tampered(trained, tmp_path, poison)
    result = run_script(
        "evaluate", f"ckpt_path={path}", f"data.data_dir={tiny_mnist}", "iw_samples=2"
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    *progress, message = [line for line in result.stderr.splitlines() if line.strip()][:-1]
    assert message.startswith(f"the model in {path} is not finite (NaN or inf in encoder.mean.")

    def no_nan(name: str) -> None:
        raise AssertionError(f"the evaluation holds {name}, which is not JSON")

    (record,) = (tmp_path / "evaluations").glob("*.json")
    metrics = json.loads(record.read_text(), parse_constant=no_nan)["metrics"]
    assert metrics["test/nll_iw"] is None and metrics["test/loss"] is None
