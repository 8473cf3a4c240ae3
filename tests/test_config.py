"""Every option of every config group composes and builds its object."""

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vaelab import UserError
from vaelab.config import check_types

from .conftest import ROOT

CONF = ROOT / "conf"
GROUPS = ["callbacks", "data", "hardware", "logger", "model", "trainer"]  # each builds objects
PARTS = ["model/encoder", "model/decoder", "model/prior", "model/likelihood"]  # model builds them
TRAINING = ["model/optimizer", "model/scheduler"]  # configure_optimizers builds them


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config `python train.py OVERRIDES` would run, with its Hydra runtime set."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", [*overrides, f"hydra.runtime.output_dir={output_dir}"], True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


EXPERIMENTS = {
    "beta4": {"model.beta": 4.0, "model.kl_warmup_epochs": 5, "trainer.max_epochs": 20},
    "continuous_bernoulli": {
        "model.likelihood": {"_target_": "vaelab.likelihoods.ContinuousBernoulli"}
    },
    "iwae_k5": {"model.iw_samples": 5, "data.binarize": "dynamic"},
    "latent2_manifold": {"model.latent_size": 2, "trainer.max_epochs": 20},
    "burda2015_vae": {
        "model.latent_size": 50,
        "model.encoder": {
            "_target_": "vaelab.networks.MLPEncoder",
            "hidden_sizes": [200, 200],
            "activation": "tanh",
        },
        "model.decoder": {
            "_target_": "vaelab.networks.MLPDecoder",
            "hidden_sizes": [200, 200],
            "activation": "tanh",
        },
        "model.iw_samples": 1,
        "model.lr": 0.001,
        "model.optimizer": {
            "_target_": "torch.optim.Adam",
            "betas": [0.9, 0.999],
            "eps": 1e-4,
            "weight_decay": 0.0,
            "fused": True,  # torch's fused kernel: the same update
        },
        "model.scheduler": {  # lr 1e-3 * 10^(-i/7) for 3^i epochs, i = 0 ... 7
            "_target_": "vaelab.schedules.StagedLR",
            "epochs": [1, 3, 9, 27, 81, 243, 729, 2187],
            "factors": [1.0, 0.719686, 0.517947, 0.372759, 0.26827, 0.19307, 0.13895, 0.1],
        },
        "data.batch_size": 20,
        "data.binarize": "dynamic",
        "trainer.max_epochs": 3280,
    },
    "burda2015_iwae": {
        "model.latent_size": 50,
        "model.iw_samples": 50,
        "data.batch_size": 20,
        "trainer.max_epochs": 3280,
    },
    "vampprior2018": {
        "model.prior": {"_target_": "vaelab.priors.VampPrior", "num_components": 500},
        "model.latent_size": 40,
        "model.decoder": {
            "_target_": "vaelab.networks.MLPDecoder",
            "hidden_sizes": [300, 300],
            "activation": "relu",
        },
        "model.kl_warmup_epochs": 100,
        "model.lr": 0.0005,
        "data.batch_size": 100,
        "data.binarize": "dynamic",
        "trainer.max_epochs": 2000,
        "callbacks.early_stopping.patience": 50,
    },
    "cpu_hour": {
        "model.prior": {"_target_": "vaelab.priors.VampPrior", "num_components": 500},
        "model.scheduler": {
            "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
            "T_max": 500,
            "eta_min": 0.0,
        },
        "model.latent_size": 40,
        "model.kl_warmup_epochs": 10,
        "model.lr": 0.001,
        "data.batch_size": 256,
        "data.binarize": "dynamic",
        "trainer.max_epochs": 500,
        "trainer.max_time": "00:01:00:00",
    },
    "vampprior2018_standard": {
        "model.prior": {"_target_": "vaelab.priors.StandardNormal"},
        "model.latent_size": 40,
        "model.encoder": {
            "_target_": "vaelab.networks.MLPEncoder",
            "hidden_sizes": [300, 300],
            "activation": "relu",
        },
        "model.decoder": {
            "_target_": "vaelab.networks.MLPDecoder",
            "hidden_sizes": [300, 300],
            "activation": "relu",
        },
        "model.kl_warmup_epochs": 100,
        "model.lr": 0.0005,
        "data.batch_size": 100,
        "data.binarize": "dynamic",
        "trainer.max_epochs": 2000,
        "callbacks.early_stopping": {
            "_target_": "lightning.pytorch.callbacks.EarlyStopping",
            "monitor": "val/loss",
            "mode": "min",
            "patience": 50,
        },
    },
}


def test_the_groups_are_the_documented_ones() -> None:
    folders = sorted(p.name for p in CONF.iterdir() if p.is_dir())
    assert folders == sorted([*GROUPS, "debug", "experiment", "hparams_search", "hydra"])
    assert options("hardware") == ["auto", "cpu", "gpu", "multi_gpu", "multi_node"]
    assert options("experiment") == sorted(EXPERIMENTS)
    assert sorted(p.name for p in (CONF / "model").iterdir() if p.is_dir()) == sorted(
        part.split("/")[1] for part in PARTS + TRAINING
    )
    assert options("model/prior") == ["mog", "standard", "vamp"]
    assert options("data") == ["fashion_mnist", "kmnist", "mnist", "tensors"]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_builds(group: str, option: str, tmp_path: Path, tiny_npz: Path) -> None:
    nodes = ["trainer.num_nodes=2"] if option == "multi_node" else []
    nodes += (
        [f"data.path={tiny_npz}", "data.val_size=8", "data.test_size=8"]
        if option == "tensors"
        else []
    )
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
        built = [instantiate(c) for c in cfg.callbacks.values()]
        assert all(isinstance(c, L.Callback) for c in built)
    elif group == "model":  # the data states its classes
        built = instantiate(cfg.model, _convert_="all", num_classes=10)
        assert type(built).__name__ == "VAEModule"
    else:
        built = instantiate(cfg[group])
        assert type(built).__name__ == cfg[group]._target_.rsplit(".", 1)[-1]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_sets_what_it_says_and_builds(experiment: str, tmp_path: Path) -> None:
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    check_types(cfg)
    expected = EXPERIMENTS[experiment]
    assert {key: OmegaConf.select(cfg, key) for key in expected} == expected
    model = instantiate(cfg.model, _convert_="all", num_classes=10)
    assert {f"model.{k}": v for k, v in model.hparams.items() if f"model.{k}" in expected} == {
        k: v for k, v in expected.items() if k.startswith("model.")
    }


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
    assert optimizer.param_groups[0]["lr"] == 0.01
    built = optimizer if group == "model/optimizer" else configured["lr_scheduler"]["scheduler"]
    node = cfg.model[group.split("/")[1]]
    assert f"{type(built).__module__}.{type(built).__name__}".endswith(
        node._target_.rsplit(".", 1)[1]
    )
    for key, value in node.items():  # the file's settings reach the object
        if key != "_target_" and group == "model/optimizer":
            assert optimizer.defaults[key] == (tuple(value) if key == "betas" else value)


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
