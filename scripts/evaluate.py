"""Evaluate a trained VAE on the test set: the ELBO's terms and an importance-weighted log p(x).

    python scripts/evaluate.py run_dir=outputs/2026-11-25/10-00-00   # the run's best checkpoint
    python scripts/evaluate.py ckpt_path=outputs/.../checkpoints/last.ckpt iw_samples=5000

Settings: conf/evaluate.yaml. The test data is prepared as in the run (e.g. `binarize`),
from the settings saved in the checkpoint. Prints a table, keeps the numbers in the run's
evaluations/<checkpoint>.json (one file per checkpoint evaluated), and logs test/nll_iw to
the run's TensorBoard. A model
that is not finite (NaN weights) gets null metrics and fails with a message saying so.
"""

import logging
import math

import hydra
from omegaconf import DictConfig

from vaelab.console import one_line_errors
from vaelab.errors import UserError, require

DEVICES = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}  # ours -> Lightning's accelerator


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float]:
    with one_line_errors():
        return evaluate(cfg)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Print, save and log the test metrics of one checkpoint; return them."""
    for key, least in (("iw_samples", 1), ("chunk_size", 1), ("batch_size", 1), ("seed", 0)):
        value = cfg[key]
        require(type(value) is int and value >= least, key, value, f"use an integer >= {least}")
    require(cfg.device in DEVICES, "device", cfg.device, f"use {' or '.join(DEVICES)}")
    # Imported once the arguments are known to be good: Lightning takes seconds to import.
    import lightning as L
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from vaelab.checkpoints import find_checkpoint, load_checkpoint, load_datamodule, where_data
    from vaelab.console import quiet
    from vaelab.metrics import active_units, standard_error
    from vaelab.records import write_evaluation

    checkpoint_path, run_dir = find_checkpoint(cfg.ckpt_path, cfg.run_dir)
    gpu = torch.cuda.is_available()
    require(gpu or cfg.device != "cuda", "device", cfg.device, "no GPU is visible; use auto or cpu")
    model, checkpoint = load_checkpoint(checkpoint_path, trust=cfg.trust)
    data = load_datamodule(checkpoint, where_data(cfg), cfg.trust, eval_batch_size=cfg.batch_size)

    # The ELBO's terms, as in training: the module's test step, through a Trainer.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no device report
    quiet()
    trainer = L.Trainer(
        accelerator=DEVICES[cfg.device],
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    torch.manual_seed(cfg.seed)  # the reparameterization noise of the ELBO
    (metrics,) = trainer.test(model.eval(), datamodule=data, verbose=False)

    # test/nll_iw: K draws of q(z|x) per image, from their own seeded generator; and the
    # means of q(z|x), whose spread over the test images counts the active units.
    device = trainer.strategy.root_device
    model.to(device)  # where in-memory test images are; the Trainer moved it back
    iw_noise = torch.Generator().manual_seed(cfg.seed)
    conditional = model.hparams.conditional
    nll, means = [], []
    batches = data.test_dataloader()
    desc = f"test/nll_iw, K={cfg.iw_samples}"
    with tqdm(total=len(batches), desc=desc, unit="batch") as progress:
        for x, labels in batches:
            x, labels = x.to(device), labels.to(device)  # read from files: on the CPU
            given = labels if conditional else None
            log_px = model.log_likelihood(x, cfg.iw_samples, cfg.chunk_size, iw_noise, given)
            nll.append(-log_px.double().cpu())
            with torch.no_grad():
                means.append(model.encode(x, given)[0].cpu())
            progress.update()
    nll = torch.cat(nll)  # (N,) nats per image
    metrics["test/nll_iw"] = nll.mean().item()
    metrics["test/nll_iw_se"] = standard_error(nll)  # over the test images
    pixels = math.prod(model.hparams.image_shape)
    metrics["test/nll_iw_bpd"] = metrics["test/nll_iw"] / (pixels * math.log(2))
    metrics["test/active_units"] = active_units(torch.cat(means))
    count = len(nll)

    likelihood, prior = type(model.likelihood).__name__, type(model.prior).__name__
    binarize = data.hparams.binarize
    print(f"{checkpoint_path}: {count} test images, binarize={binarize}, {likelihood}, {prior}")
    if conditional:
        print("A conditional model: test/nll_iw estimates -log p(x | label), not -log p(x).")
    print(f"{'metric':<16} {'value':>9}  unit")
    units = {
        "test/nll_iw": f"nats per image, K={cfg.iw_samples}",
        "test/nll_iw_se": "nats, its standard error over the test images",
        "test/nll_iw_bpd": "bits/dim",
        "test/bpd": "bits/dim, test/loss's",
        "test/active_units": f"of {model.hparams.latent_size} latent dimensions (variance > 0.01)",
    }
    for name, value in metrics.items():
        print(f"{name:<16} {value:>9.3f}  {units.get(name, 'nats per image')}")

    step = checkpoint["global_step"]
    finite = {name: value for name, value in metrics.items() if math.isfinite(value)}
    record = {
        "checkpoint": str(checkpoint_path),
        "global_step": step,
        "iw_samples": cfg.iw_samples,
        "seed": cfg.seed,
        "binarize": binarize,
        "likelihood": likelihood,
        "prior": prior,
        "conditional": conditional,
        "test_images": count,
        "metrics": {name: finite.get(name) for name in metrics},  # JSON has no NaN: null
    }
    record_path = write_evaluation(run_dir, checkpoint_path, record)
    if len(finite) < len(metrics):
        nan = [name for name, t in model.state_dict().items() if not t.isfinite().all()]
        more = f" and {len(nan) - 1} more weights" if len(nan) > 1 else ""
        why = f"NaN or inf in {nan[0]}{more}" if nan else "in its outputs, not its weights"
        raise UserError(
            f"the model in {checkpoint_path} is not finite ({why}): its metrics are written as "
            f"null to {record_path}; evaluate an earlier checkpoint of the run"
        )
    with SummaryWriter(run_dir) as writer:
        for name in ("test/nll_iw", "test/nll_iw_bpd", "test/active_units"):  # ELBO's: there
            writer.add_scalar(name, metrics[name], step)
    print(f"Wrote {record_path} and test/nll_iw to the TensorBoard of {run_dir}")
    return metrics


if __name__ == "__main__":
    main()
