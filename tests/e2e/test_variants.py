"""The VAE family: convolutional, conditional, beta and warm-up, IWAE, continuous Bernoulli."""

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image
from torch.distributions import Bernoulli, ContinuousBernoulli, Normal

from vaelab import UserError
from vaelab.checkpoints import load_checkpoint, load_datamodule
from vaelab.data import MNISTDataModule
from vaelab.losses import (
    bernoulli_nll,
    continuous_bernoulli_log_norm,
    continuous_bernoulli_nll,
    gaussian_kl,
    gaussian_log_prob,
    iw_log_likelihood,
    kl_weight,
    log_importance_weights,
    log_normal_standard,
)
from vaelab.module import VAEModule
from vaelab.networks import reparameterize

from ..conftest import (
    PRESETS_TRAINED,
    TINY_RUN,
    options,
    read_evaluation,
    read_events,
    run_script,
    run_train,
)
from ..helpers import conv_vae, mlp_vae

CONTINUOUS_BERNOULLI = {"_target_": "vaelab.likelihoods.ContinuousBernoulli"}
LABELS = {"conditional": True, "num_classes": 10}
VARIANTS = {
    "mlp": lambda: VAEModule(latent_size=3),
    "conv": lambda: conv_vae([8, 16], latent_size=3),
    "cvae": lambda: VAEModule(latent_size=3, **LABELS),
    "conv_cvae": lambda: conv_vae([8], latent_size=3, **LABELS),
    "continuous_bernoulli": lambda: VAEModule(latent_size=3, likelihood=CONTINUOUS_BERNOULLI),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_shapes(name: str) -> None:
    torch.manual_seed(0)
    model = VARIANTS[name]()
    x, labels = torch.rand(5, 1, 28, 28), torch.arange(5)
    given = labels if model.hparams.conditional else None
    mean, logvar = model.encode(x, given)
    assert mean.shape == logvar.shape == (5, 3)
    logits, _, _ = model(x, given)
    assert logits.shape == (5, 784)
    for images in (model.decode(mean, given), model.reconstruct(x, given), model.sample(5, given)):
        assert images.shape == (5, 1, 28, 28)
        assert 0 <= images.min() and images.max() <= 1
    assert model.log_likelihood(x, 7, chunk_size=3, labels=given).shape == (5,)
    objective = model.training_step((x, labels), 0)["loss"]
    objective.backward()  # the gradient reaches the encoder's first layer
    first = next(model.encoder.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_conv_layers_halve_the_image() -> None:
    model = conv_vae([32, 64], latent_size=5)
    convs = [m for m in model.encoder.body if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [
        (1, 32, (2, 2)),
        (32, 64, (2, 2)),
    ]
    assert model.encoder.mean.in_features == 64 * 7 * 7
    with pytest.raises(UserError, match=r"encoder.channels=\[8, 16, 32\] is invalid.*at most 2"):
        conv_vae([8, 16, 32])


def test_the_condition_changes_the_digit_and_must_be_given() -> None:
    torch.manual_seed(0)
    model = mlp_vae([32], latent_size=2, **LABELS)
    z = torch.randn(1, 2).expand(10, 2)  # one z, decoded with each of the ten labels
    images = model.decode(z, torch.arange(10))
    assert all(not torch.equal(images[0], images[k]) for k in range(1, 10))
    with pytest.raises(UserError, match=r"needs labels=\.\.\. of shape \(4,\), got none"):
        model.sample(4)
    with pytest.raises(UserError, match="not conditional"):
        VAEModule().sample(4, labels=torch.zeros(4, dtype=torch.long))


def test_continuous_bernoulli_equals_torch_distributions() -> None:
    """Compared in float64: torch clamps its probabilities at float32's epsilon, which moves
    its normalizer for |logit| above about 16; near logit 0 it uses a Taylor series, as here."""
    logits = torch.cat([torch.linspace(-30, 30, 601), torch.tensor([0.0, 1e-5, -3e-3, 0.0099])])
    logits = logits.double()
    x = torch.rand(3, len(logits), generator=torch.Generator().manual_seed(0)).double()
    expected = -ContinuousBernoulli(logits=logits).log_prob(x).sum(-1)  # (3,)
    torch.testing.assert_close(continuous_bernoulli_nll(logits.expand(3, -1), x), expected)
    # Per pixel, and in float32 too, against the closed form log(eta / tanh(eta / 2)).
    eta = torch.tensor([1e-2, 0.3, -2.0, 15.0, -200.0])
    torch.testing.assert_close(
        continuous_bernoulli_log_norm(eta), (eta / torch.tanh(eta / 2)).log()
    )
    torch.testing.assert_close(
        continuous_bernoulli_log_norm(torch.zeros(1)), torch.tensor([math.log(2)])
    )


def test_continuous_bernoulli_model_decodes_the_distributions_mean() -> None:
    torch.manual_seed(0)
    model = mlp_vae([16], latent_size=2, likelihood=CONTINUOUS_BERNOULLI)
    z = torch.randn(4, 2) * 3
    expected = ContinuousBernoulli(logits=model.decoder(z)).mean.view(4, 1, 28, 28)
    torch.testing.assert_close(model.decode(z), expected)
    assert not torch.allclose(model.decode(z), torch.sigmoid(model.decoder(z)).view(4, 1, 28, 28))


def test_kl_warmup_schedule() -> None:
    assert [kl_weight(4.0, 5, e) for e in (0, 1, 2.5, 5, 7)] == [0.0, 0.8, 2.0, 4.0, 4.0]
    assert kl_weight(2.0, 0, 0) == 2.0  # no warm-up: beta from the first step


def iw_bound_by_hand(model: VAEModule, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """L_K per example from torch.distributions, for the noise eps (K, B, latent)."""
    mean, logvar = model.encode(x)
    std = (0.5 * logvar).exp()
    z = mean + std * eps  # (K, B, latent)
    log_px_z = Bernoulli(logits=model.decoder(z), validate_args=False).log_prob(x.flatten(1))
    log_w = (
        log_px_z.sum(-1) + Normal(0, 1).log_prob(z).sum(-1) - Normal(mean, std).log_prob(z).sum(-1)
    )
    return torch.logsumexp(log_w, 0) - math.log(len(eps))  # (K, B) -> (B,)


def test_iwae_with_one_sample_is_the_elbo_for_the_same_noise() -> None:
    """K = 1: L_1 = log p(x|z) + log p(z) - log q(z|x), the single-sample ELBO; its KL part
    averages to the closed-form KL the VAE uses (checked over many draws)."""
    torch.manual_seed(0)
    model = mlp_vae([16], latent_size=3)
    x = torch.rand(4, 1, 28, 28)
    eps = torch.randn(1, 4, 3)
    mean, logvar = model.encode(x)
    z = mean + (0.5 * logvar).exp() * eps
    recon = -Bernoulli(logits=model.decoder(z), validate_args=False).log_prob(x.flatten(1)).sum(-1)
    kl_sample = Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1) - Normal(0, 1).log_prob(
        z
    ).sum(-1)
    torch.testing.assert_close(iw_bound_by_hand(model, x, eps), -(recon + kl_sample)[0])
    log_w = log_importance_weights(
        -recon, log_normal_standard(z), gaussian_log_prob(z, mean, logvar)
    )
    torch.testing.assert_close(iw_log_likelihood(log_w), -(recon + kl_sample)[0])
    many = mean + (0.5 * logvar).exp() * torch.randn(20000, 4, 3)  # (draws, B, latent)
    log_ratio = Normal(mean, (0.5 * logvar).exp()).log_prob(many).sum(-1) - Normal(0, 1).log_prob(
        many
    ).sum(-1)
    torch.testing.assert_close(log_ratio.mean(0), gaussian_kl(mean, logvar), atol=0.05, rtol=0)


def test_iwae_training_objective_is_the_k_sample_bound() -> None:
    torch.manual_seed(0)
    model = mlp_vae([16], latent_size=3, iw_samples=5)
    x = torch.rand(4, 1, 28, 28)
    batch = (x, torch.zeros(4, dtype=torch.long))
    torch.manual_seed(1)
    objective = model.training_step(batch, 0)["loss"]
    torch.manual_seed(1)
    _ = model.encode(x)  # the step draws its noise after encoding, which draws none
    eps = torch.randn(5, 4, 3)
    torch.testing.assert_close(objective, -iw_bound_by_hand(model, x, eps).mean())
    # Validation keeps the ELBO: one draw, closed-form KL, whatever K is.
    torch.manual_seed(2)
    val = model.validation_step(batch, 0)["loss"]
    torch.manual_seed(2)
    recon, kl, _ = model.loss_terms(x)
    torch.testing.assert_close(val, (recon + kl).mean())


def test_iwae_objective_is_below_the_negative_elbo_on_average() -> None:
    """E[-L_K] <= E[-L_1] (Burda et al. 2015, Theorem 1): the bound is tighter."""
    torch.manual_seed(0)
    batch = (torch.rand(8, 1, 28, 28).bernoulli(), torch.zeros(8, dtype=torch.long))
    vae = mlp_vae([16], latent_size=3)
    iwae = mlp_vae([16], latent_size=3, iw_samples=20)
    iwae.load_state_dict(vae.state_dict())
    with torch.no_grad():
        elbo = torch.stack([vae.training_step(batch, 0)["loss"] for _ in range(200)])
        bound = torch.stack([iwae.training_step(batch, 0)["loss"] for _ in range(50)])
    standard_error = (elbo.var() / len(elbo) + bound.var() / len(bound)).sqrt()
    assert bound.mean() < elbo.mean() - 4 * standard_error


@pytest.mark.slow
def test_a_conditional_vae_draws_the_class_it_is_given(tiny_mnist: Path, tmp_path: Path) -> None:
    """The tiny digits of class k are a bright bar on rows 4 + 2k and 5 + 2k: after a short
    fit through the real Trainer and DataModule, samples of class k have their bar there."""
    L.seed_everything(0)
    data = MNISTDataModule(str(tiny_mnist), batch_size=32, eval_batch_size=64, val_size=64)
    model = mlp_vae([64], latent_size=2, conditional=True, num_classes=data.num_classes, lr=1e-2)
    trainer = L.Trainer(
        max_epochs=30,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)
    assert data.num_classes == 10  # the model was built for the data's classes
    classes = torch.arange(10).repeat_interleave(16)
    with torch.no_grad():
        samples = model.eval().sample(160, classes, torch.Generator().manual_seed(0))
    row_brightness = samples[:, 0, :, 4:24].mean(-1)  # (160, 28 rows)
    bar_rows = row_brightness.argmax(-1)  # (160,)
    assert ((bar_rows - 4) // 2 == classes).float().mean() > 0.95


# Every experiment on disk but the long presets that test_presets.py trains in this process,
# and every model but the default, trained in every other test.
EXPERIMENTS = [e for e in options("experiment") if e not in PRESETS_TRAINED]
MODELS = [m for m in options("model") if m != "vae"]


def test_the_sweeps_hold_the_variants_the_readme_names() -> None:
    assert {"beta4", "continuous_bernoulli", "iwae_k5", "latent2_manifold"} <= set(EXPERIMENTS)
    assert {"conv_vae", "cvae"} <= set(MODELS)


@pytest.fixture(scope="module")
def experiment_runs(tiny_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each preset's run folder after `python train.py -m experiment=...`, and each model's
    after `python train.py -m model=...`, on the tiny data."""
    runs = {}
    for group, names in (("experiment", EXPERIMENTS), ("model", MODELS)):
        sweep_dir = tmp_path_factory.mktemp(group)
        widths = [o for o in TINY_RUN if not o.startswith("model.")] if group == "model" else []
        result = run_train(
            "-m",
            f"{group}={','.join(names)}",
            f"data.data_dir={tiny_mnist}",
            *(widths or TINY_RUN),
            "trainer.max_epochs=2",
            "model.latent_size=2",
            f"hydra.sweep.dir={sweep_dir}",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        for num, name in enumerate(names):
            runs[name] = next(sweep_dir.glob(f"{num}_*{group}-{name}+*"))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS + MODELS)
def test_each_experiment_trains_and_tests(
    name: str, experiment_runs: dict[str, Path], tiny_mnist: Path
) -> None:
    run_dir = experiment_runs[name]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2
    group = "model" if name in MODELS else "experiment"
    assert f"{group}={name}" in summary["overrides"]
    metrics = summary["metrics"]
    assert math.isfinite(metrics["test/loss"])
    # The logged loss is the true negative ELBO; the objective is what was optimized.
    recon, kl = metrics["train/recon"], metrics["train/kl"]
    assert metrics["train/loss"] == pytest.approx(recon + kl, rel=1e-5)
    events = read_events(run_dir)
    if name == "beta4":  # warm-up over 5 epochs to beta 4: 0.8 after one, 1.6 after two
        weights = [e.value for e in events.Scalars("train/kl_weight")]
        assert weights == pytest.approx([0.8, 1.6])
        # The second epoch's steps weight the KL by 0.8, 0.9, ..., 1.5.
        assert recon + 0.8 * kl < metrics["train/objective"] < recon + 1.5 * kl
    elif name == "iwae_k5":  # L_5 is tighter than the ELBO
        assert metrics["train/objective"] < metrics["train/loss"]
    else:
        assert metrics["train/objective"] == pytest.approx(metrics["train/loss"], rel=1e-5)
    if name == "cvae":  # the samples: one row of 8 per class, 10 rows of 28 + 2 pixels
        (samples,) = events.Images("val/samples")[-1:]
        assert (samples.height, samples.width) == (10 * 30 + 2, 8 * 30 + 2)
        # interpolations: a row for each class with two digits in the validation batch
        (walks,) = events.Images("val/interpolations")[-1:]
        rows = classes_twice("val", tiny_mnist)
        assert (walks.height, walks.width) == (rows * 30 + 2, 8 * 30 + 2)


def classes_twice(split: str, tiny_mnist: Path) -> int:
    """How many classes have two or more images in the tiny data's val or test split."""
    data = MNISTDataModule(str(tiny_mnist), val_size=64)
    data.setup("fit")
    labels = data.val_labels if split == "val" else data.test_labels
    return int((labels.bincount() >= 2).sum())


def study(script: str, run_dir: Path, tiny_mnist: Path, *args: str) -> None:
    """Run scripts/SCRIPT.py on the run's best checkpoint and check that it succeeded."""
    # Quoted: the folder's name holds a list value, [32], which Hydra takes only in quotes.
    result = run_script(script, f"run_dir='{run_dir}'", f"data_dir={tiny_mnist}", *args)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_a_conditional_model_is_evaluated_and_drawn(
    experiment_runs: dict[str, Path], tiny_mnist: Path
) -> None:
    run_dir = experiment_runs["cvae"]
    study("evaluate", run_dir, tiny_mnist, "iw_samples=10")
    evaluation = read_evaluation(run_dir)
    assert evaluation["conditional"] is True
    assert 0 < evaluation["metrics"]["test/nll_iw"] <= evaluation["metrics"]["test/loss"]
    study("visualize", run_dir, tiny_mnist)
    sizes = {path.stem: Image.open(path).size for path in (run_dir / "figures").glob("*.png")}
    assert set(sizes) == {
        "reconstructions",
        "samples",
        "interpolations",
        "traversals",
        "latent_means",
    }
    # one row of 11 steps for each class with two test digits
    assert sizes["interpolations"] == (11 * 30 + 2, classes_twice("test", tiny_mnist) * 30 + 2)
    assert sizes["samples"] == (8 * 30 + 2, 10 * 30 + 2)  # one row per class


@pytest.mark.slow
def test_a_continuous_bernoulli_model_is_evaluated_with_its_likelihood(
    experiment_runs: dict[str, Path], tiny_mnist: Path
) -> None:
    """The evaluation's ELBO is the continuous Bernoulli's: recomputed here from the same
    noise it is the same to float precision, and a Bernoulli cross-entropy in its place would
    differ by the normalizers, tens to hundreds of nats per image. Training's figure, from
    other draws, agrees within their noise."""
    run_dir = experiment_runs["continuous_bernoulli"]
    study("evaluate", run_dir, tiny_mnist, "iw_samples=10")  # seed 0, 100 images a batch
    evaluation = read_evaluation(run_dir)
    assert evaluation["likelihood"] == "ContinuousBernoulli"
    evaluated = evaluation["metrics"]
    trained = json.loads((run_dir / "metrics.json").read_text())["metrics"]

    device = "cuda" if torch.cuda.is_available() else "cpu"  # where evaluate.py ran (auto)
    model, checkpoint = load_checkpoint(evaluation["checkpoint"], device)
    data = load_datamodule(checkpoint, {"data_dir": str(tiny_mnist)}, eval_batch_size=100)
    data.setup("test")
    torch.manual_seed(0)  # evaluate.py's seed, before its test loop draws the noise
    elbo, bernoulli, count = 0.0, 0.0, 0
    with torch.no_grad():
        for x, _ in data.test_dataloader():
            x = x.to(device)
            mean, logvar = model.eval().encoder(x, None)
            z = reparameterize(mean, logvar)
            logits = model.decoder(z, None)
            kl = model.prior.kl(mean, logvar, z).sum().item()
            elbo += model.likelihood.nll(logits, x).sum().item() + kl
            bernoulli += bernoulli_nll(logits, x).sum().item() + kl
            count += len(x)
    assert evaluated["test/loss"] == pytest.approx(elbo / count, rel=1e-5, abs=1e-4)
    assert bernoulli / count - elbo / count > 50  # what the wrong likelihood would report
    # One draw per image: over 20 seeds, evaluate.py's figure for this model has a standard
    # deviation of 1.2-1.3 nats (measured on a CPU and on an H200), so two independent draws
    # differ by sd ~1.8: five of those, still far from the Bernoulli's figure above.
    assert evaluated["test/loss"] == pytest.approx(trained["test/loss"], abs=9.0)
    assert evaluated["test/nll_iw"] <= evaluated["test/loss"]
