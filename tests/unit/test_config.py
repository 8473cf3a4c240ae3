"""Every option of every config group composes and builds its object."""

import json
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from vaelab import UserError
from vaelab.config import check_types
from vaelab.train import build, train

from ..conftest import CONF, compose_train, options, write_idx_set
from ..helpers import fit_one_step

GROUPS = ["callbacks", "data", "hardware", "logger", "model", "trainer"]  # each builds objects
PARTS = ["model/encoder", "model/decoder", "model/prior", "model/likelihood"]  # model builds them
TRAINING = ["model/optimizer", "model/scheduler"]  # configure_optimizers builds them


# Groups whose options are composed and built by the tests below, but not trained here:
# sweeps (tests/e2e/test_sweeps.py runs them).
SWEEPS = ["hparams_search", "hydra/launcher"]
TRAINER_LEVEL = ["callbacks", "debug", "hardware", "logger", "trainer"]  # a fit in this process


def groups() -> list[str]:
    """Every config group on disk: each folder under conf/ that holds option files."""
    return sorted({str(p.parent.relative_to(CONF)) for p in CONF.glob("*/**/*.yaml")})


def all_options() -> list[tuple[str, str]]:
    return [(group, option) for group in groups() for option in options(group)]


def test_every_group_on_disk_is_one_the_tests_build() -> None:
    """A new group fails here until the tests know how to build and train its options."""
    known = {*GROUPS, *PARTS, *TRAINING, *SWEEPS, *TRAINER_LEVEL, "experiment"}
    assert set(groups()) == known, f"teach the tests to build {set(groups()) - known}"
    # The options that the README and the other tests name are among those on disk; every
    # option on disk, these and any other, is built and trained by the tests below.
    assert {"auto", "cpu", "gpu", "multi_gpu", "multi_node"} <= set(options("hardware"))
    assert {"mog", "standard", "vamp"} <= set(options("model/prior"))
    assert {"fashion_mnist", "kmnist", "mnist", "tensors"} <= set(options("data"))


def file_settings(group: str, option: str) -> dict[str, object]:
    """What composing `group=option` must give, read from the option's file: each leaf it
    sets (as a dotted key), over what the options it lists in its defaults give, each
    `override /GROUP: OPTION` as that option's file at GROUP."""
    node = OmegaConf.load(CONF / group / f"{option}.yaml")
    settings: dict[str, object] = {}
    for entry in node.pop("defaults", []):
        ((key, value),) = entry.items() if isinstance(entry, DictConfig) else [(None, entry)]
        if key is None:  # another option of the same group, e.g. `- burda2015_vae`
            settings.update(file_settings(group, value))
        else:  # `override /model/scheduler: stages`
            target = key.removeprefix("override ").strip("/")
            contents = OmegaConf.load(CONF / target / f"{value}.yaml")
            settings = {
                k: v for k, v in settings.items() if not k.startswith(target.replace("/", "."))
            }
            settings.update(leaves(contents, target.replace("/", ".")))
    settings.update(
        leaves(node, "" if option_is_global(group, option) else group.replace("/", "."))
    )
    return settings


def option_is_global(group: str, option: str) -> bool:
    return "# @package _global_" in (CONF / group / f"{option}.yaml").read_text()


def leaves(node: DictConfig, prefix: str) -> dict[str, object]:
    """The leaf values of a config node by dotted key, unresolved (as `${...}` strings)."""
    found: dict[str, object] = {}
    for key in node:
        name = f"{prefix}.{key}" if prefix else str(key)
        value = node._get_node(key)
        if isinstance(value, DictConfig) and len(value):
            found.update(leaves(value, name))
        else:
            found[name] = (
                OmegaConf.to_container(value)
                if isinstance(value, DictConfig | ListConfig)
                else value._value()
            )
    return found


def data_settings(option: str, request: pytest.FixtureRequest) -> list[str]:
    """Where the tiny files of data=OPTION lie, and sizes that fit them; [] for the MNIST
    family, whose data_dir the caller gives."""
    fixture = request.getfixturevalue
    return {
        "tensors": [f"data.path={fixture('tiny_npz')}", "data.val_size=8", "data.test_size=8"],
        "image_folder": [
            f"data.path={fixture('tiny_images') / 'flat'}",
            "data.val_size=8",
            "data.test_size=8",
            "data.image_size=8",
            "data.num_workers=0",
        ],
        "cifar10": [f"data.data_dir={fixture('tiny_cifar10')}", "data.val_size=8"],
        "celeba": [
            f"data.data_dir={fixture('tiny_celeba')}",
            "data.image_size=8",
            "data.num_workers=0",
        ],
    }.get(option, [])


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_builds(
    group: str, option: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    nodes = ["trainer.num_nodes=2"] if option == "multi_node" else []
    nodes += data_settings(option, request) if group == "data" else []
    cfg = compose_train([f"{group}={option}", *nodes], tmp_path)
    check_types(cfg)
    if group == "logger" and option in ("mlflow", "wandb"):
        pytest.importorskip(option)  # the loggers extra
    if group == "hardware":
        if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
            pytest.skip("no GPU here; test_gpu_presets checks the trainer settings")
        built = instantiate(cfg.trainer)
        assert isinstance(built, L.Trainer)
    elif group == "callbacks":
        built = [instantiate(c) for c in cfg.callbacks.values() if c]  # null: off, as in train
        assert all(isinstance(c, L.Callback) for c in built)
    elif group == "model":  # the data states its classes
        built = instantiate(cfg.model, _convert_="all", num_classes=10)
        assert type(built).__name__ == "VAEModule"
    else:
        built = instantiate(cfg[group])
        assert type(built).__name__ == cfg[group]._target_.rsplit(".", 1)[-1]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_sets_what_it_says_and_builds(experiment: str, tmp_path: Path) -> None:
    """Each value the preset's file sets (itself, through the presets it starts from and the
    options it picks) is in the composed config and in the model's hyperparameters."""
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    check_types(cfg)
    expected = file_settings("experiment", experiment)
    assert expected, f"experiment={experiment} sets nothing"
    assert {key: raw(cfg, key) for key in expected} == {
        key: plain(value) for key, value in expected.items()
    }
    model = instantiate(cfg.model, _convert_="all", num_classes=10)
    hparams = OmegaConf.create(dict(model.hparams))
    model_keys = [
        key for key in expected if key.startswith("model.") and "${" not in str(expected[key])
    ]
    assert {key: plain(OmegaConf.select(hparams, key[6:])) for key in model_keys} == {
        key: plain(expected[key]) for key in model_keys
    }


def raw(cfg: DictConfig, key: str) -> object:
    """The value at a dotted key as composed, an interpolation left as its `${...}` string."""
    parent, _, leaf = key.rpartition(".")
    node = (OmegaConf.select(cfg, parent) if parent else cfg)._get_node(leaf)
    return plain(node) if isinstance(node, DictConfig | ListConfig) else node._value()


def plain(value: object) -> object:
    """Lists and tuples alike, for comparing config values with built ones."""
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=False)
    return list(value) if isinstance(value, tuple) else value


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder holding the tiny MNIST, Fashion-MNIST and KMNIST files."""
    root = tmp_path_factory.mktemp("sets")
    for seed, folder in enumerate(("MNIST", "FashionMNIST", "KMNIST")):
        write_idx_set(root, folder, seed)
    return root


# A step of training on the tiny data, whatever the option sets: batches of 32, one of each
# stage (with a validation, so that a best checkpoint is kept), the progress bar off.
IDX_OPTIONS = ("mnist", "fashion_mnist", "kmnist")  # read from tiny_sets
ONE_STEP = [
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.num_sanity_val_steps=0",
    "callbacks.progress_bar.refresh_rate=0",
    "print_config=false",
]


def one_step_config(
    group: str, option: str, tiny_sets: Path, request: pytest.FixtureRequest, tmp_path: Path
) -> DictConfig:
    """`group=option` on the tiny data, set to train one step."""
    data = [f"data.data_dir={tiny_sets}", "data.val_size=64"]
    if group == "data" and option not in IDX_OPTIONS:
        data = data_settings(option, request)
    extra = ["trainer.num_nodes=2"] if option == "multi_node" else []
    if group == "debug" and option == "overfit":
        extra = ["trainer.overfit_batches=1"]
    return compose_train([f"{group}={option}", *data, *ONE_STEP, *extra], tmp_path)


def natural_image_preset(group: str, option: str) -> bool:
    """An experiment that picks a set of photographs: its full-width ResNets would take seconds
    a step here; tests/unit/test_train_presets.py trains it narrowed, on its set's tiny files."""
    return (
        group == "experiment" and "override /data:" in (CONF / group / f"{option}.yaml").read_text()
    )


# The parts' options train in every combination in tests/unit/test_parts.py.
@pytest.mark.slow  # a fit for each of some 40 options
@pytest.mark.parametrize(
    "group,option",
    [
        (g, o)
        for g, o in all_options()
        if g not in SWEEPS + PARTS and not natural_image_preset(g, o)
    ],
)
def test_every_option_trains_a_step(
    group: str, option: str, tiny_sets: Path, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Each option of each group composes, type-checks and trains: an option that shapes the
    Trainer through a fit, test and summary of one step each in this process; one that shapes
    the data or the model through an optimizer step on a batch of its data."""
    cfg = one_step_config(group, option, tiny_sets, request, tmp_path)
    check_types(cfg)
    if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        pytest.skip("no GPU here; test_gpu_presets checks the trainer settings")
    if group == "logger" and option in ("mlflow", "wandb"):
        pytest.skip("built above; tests/unit/test_loggers.py trains it, as a run of its own")
    if group in TRAINER_LEVEL:
        best_val_loss = train(cfg)
        assert math.isfinite(best_val_loss)
        summary = json.loads((tmp_path / "metrics.json").read_text())
        assert summary["status"] == "completed" and math.isfinite(summary["metrics"]["test/loss"])
        return
    datamodule = build(cfg.data, "data")
    facts = {"image_shape": datamodule.image_shape, "num_classes": datamodule.num_classes}
    model = build(cfg.model, "model", **facts)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = fit_one_step(model, datamodule)
    assert trainer.global_step == 1
    assert all(p.isfinite().all() for p in model.parameters())
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    if model.hparams.kl_warmup_epochs > 0:  # the KL, the prior's only term, weighs 0 at first
        unchanged = [name for name in unchanged if not name.startswith("prior.")]
    assert not unchanged, f"{group}={option}: the step did not reach {unchanged}"
    assert isinstance(instantiate(cfg.trainer), L.Trainer)  # and the Trainer it sets builds


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (
            ["hardware=gpu"],
            {"accelerator": "gpu", "devices": 1, "strategy": "auto"},
        ),
        (["hardware=multi_gpu"], {"accelerator": "gpu", "devices": -1, "strategy": "ddp"}),
        (
            ["hardware=multi_node", "trainer.num_nodes=4"],
            {"devices": -1, "num_nodes": 4, "strategy": "ddp"},
        ),
        (["hardware=gpu", "trainer.precision=bf16-mixed"], {"precision": "bf16-mixed"}),
    ],
)
def test_gpu_presets(overrides: list[str], expected: dict, tmp_path: Path) -> None:
    cfg = compose_train(overrides, tmp_path)
    assert cfg.tf32 is True
    assert {key: cfg.trainer[key] for key in expected} == expected


@pytest.mark.parametrize("hardware", ["multi_gpu", "multi_node"])
def test_ddp_presets_build_a_ddp_trainer(hardware: str, tmp_path: Path) -> None:
    """With the accelerator swapped for the CPU, the preset's DDP settings build a Trainer."""
    overrides = [f"hardware={hardware}", "trainer.accelerator=cpu", "trainer.devices=2"]
    if hardware == "multi_node":
        overrides.append("trainer.num_nodes=3")
    trainer = instantiate(compose_train(overrides, tmp_path).trainer)
    assert type(trainer.strategy).__name__ == "DDPStrategy"
    assert trainer.num_devices == 2 and trainer.num_nodes == (3 if hardware == "multi_node" else 1)


def test_multi_node_needs_the_node_count(tmp_path: Path) -> None:
    cfg = compose_train(["hardware=multi_node"], tmp_path)
    with pytest.raises(UserError, match="trainer.num_nodes must be given"):
        check_types(cfg)


def test_cpu_trainer(tmp_path: Path) -> None:
    trainer = instantiate(compose_train(["hardware=cpu"], tmp_path).trainer)
    assert type(trainer.accelerator).__name__ == "CPUAccelerator"
    assert trainer.max_epochs == 10 and trainer.num_devices == 1


def test_overrides_reach_the_objects(tmp_path: Path) -> None:
    cfg = compose_train(["model.latent_size=7", "model.encoder.hidden_sizes=[64,32]"], tmp_path)
    model = instantiate(cfg.model, _convert_="all")
    assert model.hparams.latent_size == 7 and model.hparams.encoder["hidden_sizes"] == [64, 32]
    assert model.encoder.mean.out_features == 7
    assert [layer.out_features for layer in model.encoder.body[::2]] == [64, 32]


@pytest.mark.parametrize("part,option", [(p, o) for p in PARTS for o in options(p)])
def test_every_part_builds_into_the_model(part: str, option: str, tmp_path: Path) -> None:
    """Each option of each part's group reaches the model as the part it names."""
    cfg = compose_train([f"{part}={option}"], tmp_path)
    check_types(cfg)
    node = cfg.model[part.split("/")[1]]
    model = instantiate(cfg.model, _convert_="all")
    built = getattr(model, part.split("/")[1])
    assert f"{type(built).__module__}.{type(built).__name__}" == node._target_
    assert model.hparams[part.split("/")[1]] == OmegaConf.to_container(node)  # plain values


@pytest.mark.parametrize("group,option", [(g, o) for g in TRAINING for o in options(g)])
def test_every_optimizer_and_scheduler_builds(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_train([f"{group}={option}", "model.lr=0.01"], tmp_path)
    check_types(cfg)
    configured = instantiate(cfg.model, _convert_="all").configure_optimizers()
    if option == "none":
        assert isinstance(configured, torch.optim.Adam)  # no scheduler
        return
    optimizer = configured if group == "model/optimizer" else configured["optimizer"]
    assert optimizer.defaults["lr"] == 0.01  # model.lr (a warm-up starts its first step below it)
    built = optimizer if group == "model/optimizer" else configured["lr_scheduler"]["scheduler"]
    node = cfg.model[group.split("/")[1]]
    assert f"{type(built).__module__}.{type(built).__name__}".endswith(
        node._target_.rsplit(".", 1)[1]
    )
    for key, value in node.items():  # the file's settings reach the object
        if key != "_target_" and group == "model/optimizer":
            assert optimizer.defaults[key] == (tuple(value) if key == "betas" else value)


def test_grad_norm_is_off_unless_turned_on_as_its_comment_says(tmp_path: Path) -> None:
    assert compose_train([], tmp_path).callbacks.grad_norm is None
    comment = (CONF / "callbacks" / "default.yaml").read_text()
    value = re.search(r"callbacks\.grad_norm='(\{.*\})'", comment).group(1)
    cfg = compose_train([f"callbacks.grad_norm={value}"], tmp_path)
    assert type(instantiate(cfg.callbacks.grad_norm)).__name__ == "GradNorm"


def test_the_lr_is_logged_at_the_schedules_interval(tmp_path: Path) -> None:
    """Each epoch, or every log_every_n_steps steps for a schedule stepped per optimizer step."""
    for option, interval in (("none", "epoch"), ("step", "epoch"), ("warmup_cosine", "step")):
        cfg = compose_train([f"model/scheduler={option}"], tmp_path)
        assert cfg.callbacks.lr_monitor.logging_interval == interval
        assert (cfg.model.scheduler or {}).get("interval", "epoch") == interval


def test_the_latent_size_is_one_key_that_every_part_reads(tmp_path: Path) -> None:
    overrides = ["model=conv_vae", "model/prior=mog", "model.latent_size=3"]
    model = instantiate(compose_train(overrides, tmp_path).model, _convert_="all")
    assert model.encoder.mean.out_features == model.prior.means.shape[1] == 3
    assert model.decoder.project[0].in_features == 3


def test_runs_write_into_the_run_folder(tmp_path: Path) -> None:
    cfg = compose_train([], tmp_path)
    assert Path(instantiate(cfg.logger).log_dir) == tmp_path
    assert cfg.callbacks.best_checkpoint.dirpath == f"{tmp_path}/checkpoints"
    assert cfg.callbacks.last_checkpoint.dirpath == f"{tmp_path}/checkpoints"


def test_data_dir_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAELAB_DATA_DIR", "/somewhere/else")
    assert compose_train([], tmp_path).data.data_dir == "/somewhere/else"
    monkeypatch.delenv("VAELAB_DATA_DIR")
    assert compose_train([], tmp_path).data.data_dir == "data"


def test_a_misspelt_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="latnt_size"):
        compose_train(["model.latnt_size=3"], tmp_path)


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.latent_size=abc", "model.latent_size='abc'.*int"),
        ("model.encoder.hidden_sizes=[400,x]", "model.encoder.hidden_sizes=.*Sequence\\[int\\]"),
        ("model.beta=true", "model.beta=True.*float"),
        ("data.batch_size=1.5", "data.batch_size=1.5.*int"),
        ("trainer.precision=bf17", "trainer.precision='bf17'"),
    ],
)
def test_a_wrong_type_is_named(override: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=message):
        check_types(compose_train([override], tmp_path))


def test_an_int_is_a_valid_float(tmp_path: Path) -> None:
    check_types(compose_train(["model.lr=1", "model.beta=4"], tmp_path))


def test_the_optuna_search_config(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")  # the sweep extra
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", ["hparams_search=optuna", "hidden_width=256"], True)
    sweeper = cfg.hydra.sweeper
    assert "OptunaSweeper" in sweeper._target_ and sweeper.direction == "minimize"
    assert "TPESampler" in sweeper.sampler._target_ and sweeper.max_failure_rate == 1.0
    assert set(sweeper.params) == {"model.latent_size", "hidden_width", "model.lr", "model.beta"}
    assert cfg.model.encoder.hidden_sizes == cfg.model.decoder.hidden_sizes == [256]


def test_the_slurm_launcher_preset() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")  # the slurm extra
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.tasks_per_node == launcher.gpus_per_node == 1  # one task per GPU, for DDP
