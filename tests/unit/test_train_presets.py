"""The papers' presets (Burda et al. 2015, Tomczak & Welling 2018) and the staged lr schedule."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from vaelab import UserError
from vaelab.checkpoints import load_checkpoint, read_checkpoint
from vaelab.config import check_types
from vaelab.schedules import StagedLR
from vaelab.train import build, train

from ..conftest import compose_train, read_events

BURDA_EPOCHS = [3**i for i in range(8)]  # stage i: 3^i epochs at 1e-3 * 10^(-i/7)
BURDA_FACTORS = [10 ** (-i / 7) for i in range(8)]
# Two short epochs on the tiny data.
QUICK = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "data.val_size=64",
    "data.eval_batch_size=64",
    "callbacks.progress_bar.refresh_rate=0",
]


def sgd(lr: float = 1e-3) -> torch.optim.SGD:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def learning_rates(scheduler: StagedLR, epochs: int) -> list[float]:
    """The lr of each of the next `epochs` epochs, the scheduler stepped after each."""
    rates = []
    for _ in range(epochs):
        rates.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def burda_stage(epoch: int) -> int:
    """Stage i of Burda et al.'s schedule holds the epochs (from 0) with 3^i <= 2 epoch + 1 <
    3^(i+1), as the stages before it last 1 + 3 + ... + 3^(i-1) = (3^i - 1) / 2 epochs."""
    stage = 0
    while stage < 7 and 3 ** (stage + 1) <= 2 * epoch + 1:
        stage += 1
    return stage


def test_staged_lr_follows_burda_et_als_stages() -> None:
    rates = learning_rates(StagedLR(sgd(), BURDA_EPOCHS, BURDA_FACTORS), 3400)
    assert rates == pytest.approx([1e-3 * 10 ** (-burda_stage(e) / 7) for e in range(3400)])
    changes = [epoch for epoch in range(1, 3400) if rates[epoch] != rates[epoch - 1]]
    assert changes == [1, 4, 13, 40, 121, 364, 1093]  # stages of 1, 3, 9, 27, ... epochs
    assert rates[3279] == rates[-1] == pytest.approx(1e-4)  # the last factor holds


def test_staged_lr_state_is_plain_values_and_resumes_in_its_stage(tmp_path: Path) -> None:
    optimizer = sgd()
    scheduler = StagedLR(optimizer, epochs=[2, 3, 1], factors=[1.0, 0.5, 0.1])
    assert learning_rates(scheduler, 4) == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4])
    path = tmp_path / "state.pt"
    torch.save({"scheduler": scheduler.state_dict(), "optimizer": optimizer.state_dict()}, path)
    saved = torch.load(path, weights_only=True)  # refuses anything but plain values and tensors
    state = saved["scheduler"]
    assert (state["last_epoch"], state["epochs"], state["factors"]) == (4, [2, 3, 1], [1, 0.5, 0.1])
    # As Lightning resumes: a fresh scheduler (at epoch 0), then both states loaded.
    optimizer = sgd()
    restored = StagedLR(optimizer, epochs=[2, 3, 1], factors=[1.0, 0.5, 0.1])
    optimizer.load_state_dict(saved["optimizer"])
    restored.load_state_dict(saved["scheduler"])
    expected = learning_rates(scheduler, 3)
    assert expected == pytest.approx([5e-4, 1e-4, 1e-4])
    assert learning_rates(restored, 3) == expected


@pytest.mark.parametrize(
    "epochs,factors,message",
    [
        ([1, 2], [1.0], r"epochs=\[1, 2\] is invalid: give one length per factor, 1 for"),
        ([], [], r"factors=\[\] is invalid: give one or more"),
        ([3, 0], [1.0, 0.1], r"epochs=\[3, 0\] is invalid: use stage lengths >= 1"),
        ([3, 3], [1.0, 0.0], r"factors=\[1.0, 0.0\] is invalid: use factors > 0"),
    ],
)
def test_staged_lr_names_a_bad_stage(epochs: list, factors: list, message: str) -> None:
    with pytest.raises(UserError, match=message):
        StagedLR(sgd(), epochs, factors)


def test_a_bad_stage_in_the_config_is_named_with_its_key(tmp_path: Path) -> None:
    cfg = compose_train(["model/scheduler=stages", "model.scheduler.factors=[1.0,-0.5]"], tmp_path)
    with pytest.raises(UserError, match=r"^model\.scheduler\.factors=\[1.0, -0.5\] is invalid"):
        build(cfg.model, "model")


def mlp_layers(network: nn.Module) -> tuple[list[int], set[str]]:
    """The widths of an MLP's hidden layers and the names of its activations."""
    widths = [layer.out_features for layer in network.body if isinstance(layer, nn.Linear)]
    return widths, {type(layer).__name__ for layer in network.body[1::2]}


BURDA = {  # what the trained model of either Burda preset has
    "widths": [200, 200],
    "activation": "Tanh",
    "latent_size": 50,
    "batch_size": 20,
    "lr": [1e-3, 1e-3 * 10 ** (-1 / 7)],  # the lr of the first two epochs: stages 0 and 1
}
VAMPPRIOR = {
    "widths": [300, 300],
    "activation": "ReLU",
    "latent_size": 40,
    "batch_size": 100,
    "lr": [5e-4, 5e-4],  # constant
}


@pytest.mark.parametrize(
    "preset,overrides,expected",
    [
        ("burda2015_vae", [], {**BURDA, "iw_samples": 1, "prior": "StandardNormal"}),
        ("burda2015_iwae", [], {**BURDA, "iw_samples": 50, "prior": "StandardNormal"}),
        (
            "vampprior2018",
            ["model.prior.num_components=5"],
            {**VAMPPRIOR, "iw_samples": 1, "prior": "VampPrior"},
        ),
        (
            "vampprior2018_standard",
            [],
            {**VAMPPRIOR, "iw_samples": 1, "prior": "StandardNormal"},
        ),
    ],
)
def test_each_papers_preset_trains_the_papers_model(
    preset: str, overrides: list[str], expected: dict, tiny_mnist: Path, tmp_path: Path
) -> None:
    cfg = compose_train(
        [f"experiment={preset}", f"data.data_dir={tiny_mnist}", *QUICK, *overrides], tmp_path
    )
    check_types(cfg)
    assert cfg.data.binarize == "dynamic" and cfg.data.batch_size == expected["batch_size"]
    assert train(cfg) > 0
    checkpoint_path = tmp_path / "checkpoints" / "last.ckpt"
    model, checkpoint = load_checkpoint(checkpoint_path)
    for network in (model.encoder, model.decoder):
        assert mlp_layers(network) == (expected["widths"], {expected["activation"]})
    assert model.encoder.mean.out_features == model.decoder.body[0].in_features
    assert model.hparams.latent_size == model.encoder.mean.out_features == expected["latent_size"]
    assert model.hparams.iw_samples == expected["iw_samples"]
    assert type(model.prior).__name__ == expected["prior"]
    logged = [event.value for event in read_events(tmp_path).Scalars("lr-Adam")]
    assert logged == pytest.approx(expected["lr"])
    adam = checkpoint["optimizer_states"][0]["param_groups"][0]
    if preset.startswith("burda"):
        assert (adam["eps"], adam["betas"]) == (1e-4, (0.9, 0.999))
        assert checkpoint["lr_schedulers"][0]["factors"] == pytest.approx(BURDA_FACTORS, rel=1e-5)
        assert checkpoint["lr_schedulers"][0]["epochs"] == BURDA_EPOCHS
    else:
        assert model.hparams.kl_warmup_epochs == 100 and checkpoint["lr_schedulers"] == []
        stopping = checkpoint["callbacks"]["EarlyStopping{'monitor': 'val/loss', 'mode': 'min'}"]
        assert stopping["patience"] == 50


@pytest.mark.parametrize(
    "preset,expected",
    [
        ("burda2015_vae", {"trainer.max_epochs": sum(BURDA_EPOCHS)}),  # 3280: all 8 stages
        ("burda2015_iwae", {"trainer.max_epochs": 3280}),
        ("vampprior2018", {"trainer.max_epochs": 2000, "model.prior.num_components": 500}),
        ("vampprior2018_standard", {"trainer.max_epochs": 2000}),
        ("cpu_hour", {"model.prior.num_components": 500, "model.scheduler.eta_min": 0.0}),
        ("cifar10_vae", {"trainer.max_epochs": 200, "model.encoder.channels": 64}),
        ("celeba64_vae", {"trainer.max_epochs": 50, "model.encoder.channels": 32}),
    ],
)
def test_the_presets_run_as_long_and_as_large_as_stated(
    preset: str, expected: dict, tmp_path: Path
) -> None:
    """What the trained-model test above overrides to stay short: epochs and prior sizes."""
    cfg = compose_train([f"experiment={preset}"], tmp_path)
    assert {key: OmegaConf.select(cfg, key) for key in expected} == expected


def test_a_resumed_burda_run_goes_on_in_its_stage(tiny_mnist: Path, tmp_path: Path) -> None:
    """Stopped after 2 epochs (stages 0 and 1), resumed to 5: epochs 2 and 3 finish stage 1,
    epoch 4 starts stage 2. A scheduler restarted at epoch 0 would still be in stage 1."""
    run = ["experiment=burda2015_vae", f"data.data_dir={tiny_mnist}", *QUICK]
    train(compose_train(run, tmp_path))
    train(compose_train([*run, "trainer.max_epochs=5", "resume=true"], tmp_path))
    logged = [event.value for event in read_events(tmp_path).Scalars("lr-Adam")]
    assert logged == pytest.approx([1e-3 * BURDA_FACTORS[burda_stage(e)] for e in range(5)])
    assert [burda_stage(e) for e in range(5)] == [0, 1, 1, 1, 2]
    saved = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["lr_schedulers"][0]
    assert saved["last_epoch"] == 5


def test_the_cpu_hour_preset_trains_its_model(tiny_mnist: Path, tmp_path: Path) -> None:
    """experiment=cpu_hour: 400 ReLU units, 40 latents, the VampPrior, batches of 256, a cosine
    schedule over its epochs, and at most an hour."""
    cfg = compose_train(["experiment=cpu_hour", f"data.data_dir={tiny_mnist}"], tmp_path)
    assert (cfg.trainer.max_epochs, cfg.trainer.max_time) == (500, "00:01:00:00")
    assert cfg.model.scheduler.T_max == 500
    cfg = compose_train(
        [
            "experiment=cpu_hour",
            f"data.data_dir={tiny_mnist}",
            *QUICK,
            "model.prior.num_components=5",
            "callbacks.images=null",  # a callback dropped by null
        ],
        tmp_path,
    )
    check_types(cfg)
    assert cfg.data.binarize == "dynamic" and cfg.data.batch_size == 256
    assert train(cfg) > 0
    model, _ = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    for network in (model.encoder, model.decoder):
        assert mlp_layers(network) == ([400], {"ReLU"})
    assert model.hparams.latent_size == 40 and model.hparams.kl_warmup_epochs == 10
    assert type(model.prior).__name__ == "VampPrior"
    events = read_events(tmp_path)
    logged = [event.value for event in events.Scalars("lr-Adam")]
    assert logged == pytest.approx([1e-3, 5e-4])  # cosine over the 2 epochs of this run
    assert events.Tags()["images"] == [] and "val/active_units" in events.Tags()["scalars"]


# The natural-image presets at a hundredth of their widths, on their sets' tiny files.
NARROW = [
    *(
        f"model.{net}.{key}={width}"
        for net in ("encoder", "decoder")
        for key, width in (("channels", 4), ("max_channels", 8), ("blocks", 1))
    ),
    "model.latent_size=4",
    "trainer.max_epochs=2",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "callbacks.progress_bar.refresh_rate=0",
    "callbacks.images=null",
]


def test_the_cifar10_preset_trains_vdvaes_settings(tiny_cifar10: Path, tmp_path: Path) -> None:
    """A ResNet VAE with 10 discretized logistics, AdamW (0.9, 0.9) warmed up per step towards
    2e-4, gradients clipped at 200 and their norm logged, on CIFAR-10's 32 x 32 RGB images."""
    cfg = compose_train(
        ["experiment=cifar10_vae", f"data.data_dir={tiny_cifar10}", "data.val_size=8", *NARROW],
        tmp_path,
    )
    assert cfg.trainer.gradient_clip_val == 200.0
    assert train(cfg) > 0
    model, checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert model.hparams.image_shape == [3, 32, 32]
    assert type(model.encoder).__name__ == "ResNetEncoder"
    assert type(model.likelihood).__name__ == "DiscretizedLogistic"
    assert model.likelihood.num_mixtures == 10 and model.likelihood.coupled
    steps = checkpoint["global_step"]  # 2 epochs of 4 batches of the 32 training images
    assert steps == 8 and checkpoint["lr_schedulers"][0]["last_epoch"] == steps
    adamw = checkpoint["optimizer_states"][0]["param_groups"][0]
    assert adamw["betas"] == (0.9, 0.9) and adamw["weight_decay"] == 0.01
    # Still warming up, per step: the lr of the next step, t = 8 from 0, is 2e-4 * (t + 1) / 100.
    assert adamw["lr"] == pytest.approx(2e-4 * (steps + 1) / 100)
    assert len(read_events(tmp_path).Scalars("train/grad_norm")) == 2


def test_the_celeba_preset_trains_on_64_pixel_faces(tiny_celeba: Path, tmp_path: Path) -> None:
    """The crop of 148 resized to 64 x 64, a ResNet of four halvings, the sigma-VAE's Gaussian,
    and the lr times 0.95 after each epoch."""
    cfg = compose_train(
        ["experiment=celeba64_vae", f"data.data_dir={tiny_celeba}", "data.num_workers=0", *NARROW],
        tmp_path,
    )
    assert train(cfg) > 0
    model, checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert model.hparams.image_shape == [3, 64, 64]
    assert type(model.decoder).__name__ == "ResNetDecoder"
    assert (type(model.likelihood).__name__, model.likelihood.variance) == ("Gaussian", "optimal")
    adam = checkpoint["optimizer_states"][0]["param_groups"][0]
    assert adam["lr"] == pytest.approx(1e-3 * 0.95**2)
