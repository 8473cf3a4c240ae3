"""Draw what a trained VAE learned, as PNGs in <run>/figures/ and in the run's TensorBoard.

    python scripts/visualize.py run_dir=outputs/2026-11-25/10-00-00   # the run's best checkpoint
    python scripts/visualize.py ckpt_path=outputs/.../checkpoints/last.ckpt

Draws test digits above their reconstructions, samples from the prior, interpolations
between test digits, latent traversals, the test set's latent means coloured by digit (their
first two principal components beyond 2 dimensions) and, for a 2-D latent, the learned
manifold; TensorBoard also gets the latent means for its embedding projector. For a
conditional model the samples have one row per class (the same draws of z in each column),
each interpolation joins two digits of one class, and there is no manifold, which would
need one label for the whole plane.
Settings: conf/visualize.yaml.
"""

import sys

import hydra
from omegaconf import DictConfig

from vaelab import UserError, require
from vaelab.runs import find_checkpoint, quote_paths

NROW = 8  # images per row of the reconstructions and samples
STEPS = 11  # images per interpolation and per traversal, so the middle one is the midpoint
MANIFOLD_SIZE = 20  # the manifold's grid is MANIFOLD_SIZE x MANIFOLD_SIZE


@hydra.main(config_path="../conf", config_name="visualize", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        visualize(cfg)
    except UserError as err:  # a setup or config mistake, not a bug: the message, no traceback
        raise SystemExit(f"Error: {err}") from None


def visualize(cfg: DictConfig) -> None:
    """Write the pictures of one checkpoint into its run folder."""
    checkpoint, run_dir = find_checkpoint(cfg.ckpt_path, cfg.run_dir)
    for key, least in (("seed", 0), ("embedding_size", 1)):
        value = cfg[key]
        require(type(value) is int and value >= least, key, value, f"use an integer >= {least}")
    # Imported once the arguments are known to be good: Lightning takes seconds to import.
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import make_grid, save_image

    from vaelab.data import MNISTDataModule
    from vaelab.module import load_checkpoint, read_checkpoint
    from vaelab.pictures import (
        interpolation_latents,
        latent_scatter,
        manifold_latents,
        pairs_grid,
        same_class_pairs,
        traversal_latents,
    )

    model = load_checkpoint(checkpoint).eval()
    data = MNISTDataModule.load_from_checkpoint(
        checkpoint, data_dir=cfg.data_dir, weights_only=True
    )
    data.setup("test")
    images, labels = data.test_images, data.test_labels  # (N, 1, 28, 28), (N,)
    noise = torch.Generator().manual_seed(cfg.seed)
    conditional = model.needs_labels

    def given(rows: slice) -> torch.Tensor | None:  # the labels a conditional model is given
        return labels[rows] if conditional else None

    with torch.no_grad():
        batches = range(0, len(images), 1000)
        means = [model.encode(images[i : i + 1000], given(slice(i, i + 1000)))[0] for i in batches]
        means = torch.cat(means)  # (N, latent)
        digits = images[: 4 * NROW]
        # The first test digit; row i moves latent dimension i from -3 to 3.
        traversals = traversal_latents(means[0], STEPS)
        traversal_labels = given(slice(0, 1)).expand(len(traversals)) if conditional else None
        grids = {
            "reconstructions": pairs_grid(
                digits, model.reconstruct(digits, given(slice(4 * NROW))), NROW
            ),
            "traversals": make_grid(model.decode(traversals, traversal_labels), STEPS),
        }
        if conditional:  # row k: class k, the same NROW draws of z in every row
            classes = torch.arange(model.hparams.num_classes)
            z = torch.randn(NROW, model.hparams.latent_size, generator=noise)
            samples = model.decode(z.repeat(len(classes), 1), classes.repeat_interleave(NROW))
            grids["samples"] = make_grid(samples, NROW)
            # Row k walks between two test digits of class k, decoded with that label.
            starts, ends = same_class_pairs(labels)
            walk_labels = labels[starts].repeat_interleave(STEPS)
        else:
            grids["samples"] = make_grid(model.sample(NROW * NROW, generator=noise), NROW)
            # Row i walks from test digit i to test digit i + NROW.
            starts, ends = torch.arange(NROW), torch.arange(NROW, 2 * NROW)
            walk_labels = None
        walks = interpolation_latents(means[starts], means[ends], STEPS)
        grids["interpolations"] = make_grid(model.decode(walks, walk_labels), STEPS)
        if model.hparams.latent_size == 2 and not conditional:
            manifold = model.decode(manifold_latents(MANIFOLD_SIZE))
            grids["manifold"] = make_grid(manifold, MANIFOLD_SIZE)

    step = read_checkpoint(checkpoint)["global_step"]
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    with SummaryWriter(run_dir) as writer:
        for name, grid in grids.items():
            save_image(grid, figures / f"{name}.png")
            writer.add_image(f"test/{name}", grid, step)
        scatter = latent_scatter(means, labels, f"Means of q(z|x), {len(images)} test images")
        scatter.savefig(figures / "latent_means.png", dpi=120)
        writer.add_figure("test/latent_means", scatter, step)
        n = cfg.embedding_size
        writer.add_embedding(
            means[:n], metadata=labels[:n].tolist(), label_img=images[:n], global_step=step,
            tag="test_latent_means",
        )  # fmt: skip
    print(f"Wrote {', '.join(sorted(p.name for p in figures.iterdir()))} to {figures},")
    print(f"and the images and embedding to the TensorBoard of {run_dir}")


if __name__ == "__main__":
    sys.argv[1:] = quote_paths(sys.argv[1:])  # so sweep folders, named a=b,c=d, can be given
    main()
