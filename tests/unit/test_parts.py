"""The parts: every combination builds, trains and reloads; bad parts are named; a prior of
one's own, as the README shows it, trains and evaluates."""

import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from vaelab import UserError
from vaelab.data import MNISTDataModule
from vaelab.module import VAEModule
from vaelab.train import train

from ..conftest import (
    CONF,
    ROOT,
    TINY_RUN,
    compose_train,
    read_evaluation,
    readme_blocks,
    run_script,
    run_train,
)
from ..helpers import fit_one_step

SMALL = {  # settings that keep an option's part small, where it has them
    "hidden_sizes": [16],
    "activation": "tanh",
    "channels": [4],  # or 4, where the file gives one width (the resnet's)
    "max_channels": 8,
    "blocks": 1,
    "num_components": 3,
}


def small(key: str, value: object) -> object:
    """SMALL's setting for `key` in the file's form: a list's first item where the file's
    value is one number."""
    setting = SMALL.get(key, value)
    return setting[0] if isinstance(setting, list) and not isinstance(value, list) else setting


def option_files(group: str) -> dict[str, dict]:
    """Each option of a part's group (conf/model/GROUP/), as its file with SMALL settings."""
    found = {}
    for path in sorted((CONF / "model" / group).glob("*.yaml")):
        spec = OmegaConf.to_container(OmegaConf.load(path))
        found[path.stem] = {key: small(key, value) for key, value in spec.items()}
    return found


ENCODERS, DECODERS = option_files("encoder"), option_files("decoder")
PRIORS, LIKELIHOODS = option_files("prior"), option_files("likelihood")


def network(kind: str, side: str) -> dict:
    return (ENCODERS if side == "Encoder" else DECODERS)[kind]


def test_the_parts_include_those_the_readme_names() -> None:
    """At least these; test_every_combination... below trains whichever are on disk."""
    assert {"mlp", "conv"} <= set(ENCODERS) and {"mlp", "conv"} <= set(DECODERS)
    assert {"standard", "mog", "vamp"} <= set(PRIORS)
    assert {"bernoulli", "continuous_bernoulli"} <= set(LIKELIHOODS)


@pytest.fixture(scope="module")
def tiny_data(tiny_mnist: Path) -> MNISTDataModule:
    return MNISTDataModule(str(tiny_mnist), batch_size=32, val_size=64)


# Every prior x likelihood x conditioning with an encoder and decoder of one kind (mlp-mlp,
# conv-conv, resnet-resnet...). An encoder and a decoder meet only in the latent, so a pair of
# two kinds trains once, conditional, in the whole suite: all of them x every prior and
# likelihood would add a hundred steps for the third kind of network, and the suite's minutes.
COMBINATIONS = [
    *(
        pytest.param(encoder, encoder, *c)
        for encoder in ENCODERS
        if encoder in DECODERS
        for c in itertools.product(PRIORS, LIKELIHOODS, (False, True))
    ),
    *(
        pytest.param(encoder, decoder, "standard", "bernoulli", True, marks=[pytest.mark.slow])
        for encoder, decoder in itertools.product(ENCODERS, DECODERS)
        if encoder != decoder
    ),
]


@pytest.mark.parametrize("encoder,decoder,prior,likelihood,conditional", COMBINATIONS)
def test_every_combination_trains_a_step_and_loads_from_its_checkpoint(
    encoder: str,
    decoder: str,
    prior: str,
    likelihood: str,
    conditional: bool,
    tiny_data: MNISTDataModule,
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = VAEModule(
        latent_size=3,
        encoder=network(encoder, "Encoder"),
        decoder=network(decoder, "Decoder"),
        prior=PRIORS[prior],
        likelihood=LIKELIHOODS[likelihood],
        conditional=conditional,
        image_shape=tiny_data.image_shape,
        num_classes=tiny_data.num_classes,
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = fit_one_step(model, tiny_data)
    assert trainer.global_step == 1
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert changed == list(before)  # the step reached every part's parameters
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # plain values only: no pickled parts
    assert checkpoint["hyper_parameters"]["prior"] == PRIORS[prior]
    parts = (network(encoder, "Encoder"), network(decoder, "Decoder"), PRIORS[prior])
    own = {spec["_target_"].rsplit(".", 1)[0] for spec in (*parts, LIKELIHOODS[likelihood])}
    trust = sorted(m for m in own if m.split(".")[0] != "vaelab")  # a part of one's own
    loaded = VAEModule.load_from_checkpoint(path, trust=trust).eval()
    # The fit leaves the model, and the DataModule its images, on a GPU where there is one.
    model, loaded = model.to("cpu"), loaded.to("cpu")
    x, labels = tiny_data.val_images[:5].cpu(), tiny_data.val_labels[:5].cpu()
    given = labels if conditional else None
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x, given), model.eval().encode(x, given))
        generator = torch.Generator().manual_seed(0)
        torch.testing.assert_close(
            loaded.log_likelihood(x, 4, generator=generator, labels=given),
            model.log_likelihood(x, 4, generator=generator.manual_seed(0), labels=given),
        )
    assert type(loaded.prior) is type(model.prior)
    assert type(loaded.likelihood) is type(model.likelihood)


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"hidden_sizes": [8]}, "encoder={'hidden_sizes': \\[8\\]} has no _target_"),
        ({"_target_": "vaelab.networks.Nope"}, "encoder._target_='vaelab.networks.Nope' cannot"),
        ({"_target_": "nowhere.Encoder"}, "encoder._target_='nowhere.Encoder' cannot be imported"),
        (
            {"_target_": "vaelab.networks.MLPEncoder", "widths": [8]},
            "encoder.widths is not a setting of MLPEncoder: use hidden_sizes, activation",
        ),
        (
            {"_target_": "vaelab.networks.MLPEncoder", "latent_size": 8},
            "encoder.latent_size is set by the VAE itself: set model.latent_size",
        ),
        (
            {"_target_": "vaelab.networks.MLPEncoder", "activation": "gelu"},
            "encoder.activation='gelu' is invalid: use relu or tanh",
        ),
    ],
)
def test_a_bad_part_is_named(spec: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        VAEModule(encoder=spec)


def test_the_activation_is_the_one_chosen() -> None:
    model = VAEModule(
        encoder={"_target_": "vaelab.networks.MLPEncoder", "activation": "tanh"},
        decoder={"_target_": "vaelab.networks.MLPDecoder", "hidden_sizes": [30, 40]},
    )
    assert [type(m).__name__ for m in model.encoder.body] == ["Linear", "Tanh"]
    assert [type(m).__name__ for m in model.decoder.body] == ["Linear", "ReLU"] * 2
    assert model.decoder.logits.in_features == 40 and model.encoder.mean.in_features == 400


def test_a_conditional_model_needs_labelled_data(tiny_pt: Path, tmp_path: Path) -> None:
    overrides = ["data=tensors", f"data.path={tiny_pt}", "data.val_size=20", "data.test_size=20"]
    with pytest.raises(UserError, match="model.conditional=True is invalid: the data has no"):
        train(compose_train([*overrides, "model=cvae"], tmp_path))


@pytest.mark.slow
def test_a_prior_of_ones_own_as_the_readme_shows(tiny_mnist: Path, tmp_path: Path) -> None:
    """The class and the YAML file of the README's "Add your own prior", outside the package
    and its conf/, reached through PYTHONPATH and hydra.searchpath: it trains and evaluates."""
    code, config, _ = readme_blocks("Add your own prior")
    module = re.search(r"# (\w+\.py)", code).group(1)
    (tmp_path / module).write_text(code)
    config_path = tmp_path / re.search(r"# (conf/\S+\.yaml)", config).group(1)
    config_path.parent.mkdir(parents=True)
    config_path.write_text(config)
    option = config_path.stem
    env = {"PYTHONPATH": str(tmp_path)}
    run_dir = tmp_path / "run"
    result = run_train(
        f"data.data_dir={tiny_mnist}",
        *TINY_RUN,
        f"model/prior={option}",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        f"hydra.run.dir={run_dir}",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trust = f"trust=[{Path(module).stem}]"  # loading builds a part of one's own only if trusted
    result = run_script(
        "evaluate", f"run_dir={run_dir}", f"data_dir={tiny_mnist}", "iw_samples=5", trust, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = read_evaluation(run_dir)
    class_name = re.search(r"class (\w+)\(Prior\)", code).group(1)
    assert evaluation["prior"] == class_name
    assert 0 < evaluation["metrics"]["test/nll_iw"] < 784 * 0.7


def tracked_files() -> list[str]:
    """The files of this checkout that git tracks, as paths relative to it."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    return [name for name in listed.stdout.split("\0") if name and (ROOT / name).is_file()]


@pytest.mark.slow
def test_the_readme_recipe_for_a_prior_inside_a_copy_of_the_checkout(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """The README's "Add your own prior", done literally in a copy of this checkout: its
    class where it says, its YAML file in conf/, its training command; the run completes,
    and the copy's own config and parts tests, which find the new option on disk, pass."""
    copy = tmp_path / "checkout"
    for name in tracked_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    code, config, commands = readme_blocks("Add your own prior")
    (copy / re.search(r"# (\S+\.py)", code).group(1)).write_text(code)
    config_path = copy / re.search(r"# (conf/\S+\.yaml)", config).group(1)
    config_path.write_text(config)
    option = f"{config_path.parent.name}={config_path.stem}"  # e.g. prior=laplace
    command = next(line for line in commands.splitlines() if " train.py " in line)
    words = shlex.split(command)
    at = words.index("python")
    assignments, (python, script, *args) = words[:at], words[at:]
    assert (python, script) == ("python", "train.py") and f"model/{option}" in args
    env = {**os.environ, **dict(a.split("=", 1) for a in assignments)}
    # The copy's own vaelab, not the one installed: src/ after the recipe's PYTHONPATH.
    env["PYTHONPATH"] = os.pathsep.join([*env.get("PYTHONPATH", ".").split(os.pathsep), "src"])
    run = [f"data.data_dir={tiny_mnist}", *TINY_RUN, f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(
        [sys.executable, script, *args, *run], cwd=copy, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"
    # The property tests of the copy, on its options: the new prior's among them.
    suite = ["tests/unit/test_config.py", "tests/unit/test_parts.py"]
    suite += ["-k", f"{config_path.stem} or disk"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "0", "-q", "-p", "no:cacheprovider", *suite],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    passed = int(re.search(r"(\d+) passed", result.stdout).group(1))
    kinds = len(set(ENCODERS) & set(DECODERS))  # the new prior with each kind of network
    assert passed >= kinds * len(LIKELIHOODS) * 2  # its combinations


@pytest.mark.slow
def test_own_colour_images_train_evaluate_and_draw(tiny_pt: Path, tmp_path: Path) -> None:
    """data=tensors with 16 x 16 RGB images and no labels, through a convolutional VAE with
    the VampPrior: nothing assumes 28 x 28 grey digits or ten classes."""
    run_dir = tmp_path / "run"
    result = run_train(
        "data=tensors",
        f"data.path={tiny_pt}",
        "data.val_size=40",
        "data.test_size=40",
        "data.batch_size=32",
        "model=conv_vae",
        "model.encoder.channels=[8,16]",
        "model.decoder.channels=[16,8]",
        "model/prior=vamp",
        "model.prior.num_components=5",
        "model.latent_size=3",
        "trainer.max_epochs=2",
        "callbacks.progress_bar.refresh_rate=0",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for script, args in (("evaluate", ["iw_samples=5"]), ("visualize", [])):
        result = run_script(script, f"run_dir={run_dir}", *args)
        assert result.returncode == 0, result.stderr[-3000:]
    evaluation = read_evaluation(run_dir)
    assert evaluation["test_images"] == 40 and evaluation["prior"] == "VampPrior"
    pixels = 3 * 16 * 16
    nll = evaluation["metrics"]["test/nll_iw"]
    assert evaluation["metrics"]["test/nll_iw_bpd"] == pytest.approx(nll / (pixels * math.log(2)))
    cell = 16 + 2  # make_grid pads by 2 pixels
    with Image.open(run_dir / "figures" / "samples.png") as samples:
        assert samples.size == (8 * cell + 2, 8 * cell + 2) and samples.mode == "RGB"
    model = VAEModule.load_from_checkpoint(next((run_dir / "checkpoints").glob("epoch*.ckpt")))
    assert model.hparams.image_shape == [3, 16, 16] and model.hparams.num_classes == 0
