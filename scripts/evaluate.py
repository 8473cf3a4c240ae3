"""Evaluate a trained VAE on the test set: the ELBO's terms and an importance-weighted log p(x).

    python scripts/evaluate.py run_dir=outputs/2026-11-25/10-00-00   # the run's best checkpoint
    python scripts/evaluate.py ckpt_path=outputs/.../checkpoints/last.ckpt iw_samples=5000

Settings: conf/evaluate.yaml. The test data is prepared as in the run (e.g. `binarize`),
from the settings saved in the checkpoint. Prints a table, adds the numbers to the run's
metrics.json under "evaluation", and logs test/nll_iw to the run's TensorBoard.
"""

import json
import math
import sys

import hydra
from omegaconf import DictConfig

from vaelab import UserError, require
from vaelab.runs import find_checkpoint, quote_paths

DEVICES = ("auto", "cpu", "cuda")


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except UserError as err:  # a setup or config mistake, not a bug: the message, no traceback
        raise SystemExit(f"Error: {err}") from None


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Print, save and log the test metrics of one checkpoint; return them."""
    checkpoint, run_dir = find_checkpoint(cfg.ckpt_path, cfg.run_dir)
    for key, least in (("iw_samples", 1), ("chunk_size", 1), ("batch_size", 1), ("seed", 0)):
        value = cfg[key]
        require(type(value) is int and value >= least, key, value, f"use an integer >= {least}")
    require(cfg.device in DEVICES, "device", cfg.device, f"use {' or '.join(DEVICES)}")
    # Imported once the arguments are known to be good: Lightning takes seconds to import.
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from vaelab.data import MNISTDataModule
    from vaelab.module import load_checkpoint, read_checkpoint

    gpu = torch.cuda.is_available()
    require(gpu or cfg.device != "cuda", "device", cfg.device, "no GPU is visible; use auto or cpu")
    device = torch.device(("cuda" if gpu else "cpu") if cfg.device == "auto" else cfg.device)
    model = load_checkpoint(checkpoint, map_location=device).eval()
    data = MNISTDataModule.load_from_checkpoint(
        checkpoint, data_dir=cfg.data_dir, eval_batch_size=cfg.batch_size, weights_only=True
    )
    data.with_labels = model.needs_labels
    data.setup("test")
    torch.manual_seed(cfg.seed)  # the reparameterization noise of the ELBO
    iw_noise = torch.Generator().manual_seed(cfg.seed)  # the draws for the IW estimate
    sums = dict.fromkeys(["test/loss", "test/recon", "test/kl", "test/nll_iw"], 0.0)
    with torch.no_grad():
        for batch in data.test_dataloader():
            x, labels = model.split_batch(batch)  # labels: None unless the model is conditional
            x = x.to(device)
            recon, kl = model.loss_terms(x, labels)  # (B,) each
            nll_iw = -model.log_likelihood(
                x, cfg.iw_samples, cfg.chunk_size, generator=iw_noise, labels=labels
            )
            sums["test/loss"] += (recon + kl).sum().item()
            sums["test/recon"] += recon.sum().item()
            sums["test/kl"] += kl.sum().item()
            sums["test/nll_iw"] += nll_iw.sum().item()
    count = len(data.test_images)
    metrics = {name: total / count for name, total in sums.items()}  # nats per example
    pixels = data.test_images[0].numel()
    metrics["test/nll_iw_bpd"] = metrics["test/nll_iw"] / (pixels * math.log(2))

    likelihood = model.hparams.likelihood
    print(f"{checkpoint}: {count} test images, binarize={data.hparams.binarize}, {likelihood}")
    if model.needs_labels:
        print("A conditional model: test/nll_iw estimates -log p(x | label), not -log p(x).")
    print(f"{'metric':<16} {'value':>9}  unit")
    units = {"test/nll_iw": f"nats per image, K={cfg.iw_samples}", "test/nll_iw_bpd": "bits/dim"}
    for name, value in metrics.items():
        print(f"{name:<16} {value:>9.3f}  {units.get(name, 'nats per image')}")

    step = read_checkpoint(checkpoint)["global_step"]
    summary_path = run_dir / "metrics.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary["evaluation"] = {
        "checkpoint": str(checkpoint),
        "global_step": step,
        "iw_samples": cfg.iw_samples,
        "seed": cfg.seed,
        "binarize": data.hparams.binarize,
        "likelihood": likelihood,
        "conditional": model.needs_labels,
        "test_images": count,
        "metrics": metrics,
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    with SummaryWriter(run_dir) as writer:
        for name in ("test/nll_iw", "test/nll_iw_bpd"):  # the ELBO's terms are there already
            writer.add_scalar(name, metrics[name], step)
    print(f"Wrote {summary_path} and test/nll_iw to the TensorBoard of {run_dir}")
    return metrics


if __name__ == "__main__":
    sys.argv[1:] = quote_paths(sys.argv[1:])  # so sweep folders, named a=b,c=d, can be given
    main()
