"""Draw what a trained VAE learned, as PNGs in <run>/figures/ and in the run's TensorBoard.

    python scripts/visualize.py run_dir=outputs/2026-11-25/10-00-00   # the run's best checkpoint
    python scripts/visualize.py ckpt_path=outputs/.../checkpoints/last.ckpt

Draws test images above their reconstructions, samples from the model's prior,
interpolations between test images, latent traversals, the test set's latent means coloured
by label (their first two principal components beyond 2 dimensions) and, for a 2-D latent,
the learned manifold; TensorBoard also gets the latent means for its embedding projector.
For a conditional model the samples have one row per class (the same draws of z in each
column), each interpolation joins two images of one class, and there is no manifold, which
would need one label for the whole plane.
Settings: conf/visualize.yaml.
"""

import hydra
from omegaconf import DictConfig

from vaelab.console import one_line_errors
from vaelab.errors import require

NROW = 8  # images per row of the reconstructions and samples
STEPS = 11  # images per interpolation and per traversal, so the middle one is the midpoint
MANIFOLD_SIZE = 20  # the manifold's grid is MANIFOLD_SIZE x MANIFOLD_SIZE


@hydra.main(config_path="../conf", config_name="visualize", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        visualize(cfg)


def visualize(cfg: DictConfig) -> None:
    """Write the pictures of one checkpoint into its run folder."""
    for key, least in (("seed", 0), ("embedding_size", 1)):
        value = cfg[key]
        require(type(value) is int and value >= least, key, value, f"use an integer >= {least}")
    # Imported once the arguments are known to be good: Lightning takes seconds to import.
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import make_grid, save_image

    from vaelab.checkpoints import find_checkpoint, load_checkpoint, load_datamodule, where_data
    from vaelab.pictures import (
        interpolations_grid,
        latent_scatter,
        manifold_latents,
        pairs_grid,
        samples_grid,
        traversal_latents,
    )

    checkpoint_path, run_dir = find_checkpoint(cfg.ckpt_path, cfg.run_dir)
    model, checkpoint = load_checkpoint(checkpoint_path, trust=cfg.trust)
    model.eval()
    # Batches of 1000, as the means were always computed: the same figures to the bit.
    data = load_datamodule(checkpoint, where_data(cfg), cfg.trust, eval_batch_size=1000)
    data.prepare_data()  # as in training: downloaded if missing, else the same message
    data.setup("test")
    conditional = model.hparams.conditional
    # The means of q(z|x) and the labels of all test images; the first `kept` test images.
    kept = max(cfg.embedding_size, 4 * NROW)
    means, all_labels, first = [], [], []
    with torch.no_grad():
        for x, y in data.test_dataloader():  # (B, C, H, W), (B,)
            means.append(model.encode(x, y if conditional else None)[0])  # (B, latent)
            all_labels.append(y)
            if sum(len(images) for images, _ in first) < kept:
                first.append((x, y))
    means, labels = torch.cat(means), torch.cat(all_labels)  # (N, latent), (N,)
    images = torch.cat([x for x, _ in first])[:kept]  # (kept, C, H, W)
    given = labels if conditional else None  # the labels a conditional model is given

    with torch.no_grad():
        digits = images[: 4 * NROW]
        reconstructions = model.reconstruct(digits, None if given is None else given[: 4 * NROW])
        # The first test image; row i moves latent dimension i from -3 to 3.
        traversals = traversal_latents(means[0], STEPS)
        traversal_labels = None if given is None else given[:1].expand(len(traversals))
        noise = torch.Generator().manual_seed(cfg.seed)
        grids = {
            "reconstructions": pairs_grid(digits, reconstructions, NROW),
            "traversals": make_grid(model.decode(traversals, traversal_labels), STEPS),
            "samples": samples_grid(model, NROW * NROW, NROW, noise),
            "interpolations": interpolations_grid(model, images, labels[:kept], NROW, STEPS),
        }
        if model.hparams.latent_size == 2 and not conditional:
            manifold = model.decode(manifold_latents(MANIFOLD_SIZE))
            grids["manifold"] = make_grid(manifold, MANIFOLD_SIZE)

    step = checkpoint["global_step"]
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    with SummaryWriter(run_dir) as writer:
        for name, grid in grids.items():
            if grid is not None:  # no interpolation without two images of a class
                save_image(grid, figures / f"{name}.png")
                writer.add_image(f"test/{name}", grid, step)
        scatter = latent_scatter(means, labels, f"Means of q(z|x), {len(means)} test images")
        scatter.savefig(figures / "latent_means.png", dpi=120)
        writer.add_figure("test/latent_means", scatter, step)
        n = cfg.embedding_size
        writer.add_embedding(
            means[:n],
            metadata=labels[:n].tolist(),
            label_img=images[:n],
            global_step=step,
            tag="test_latent_means",
        )
    print(f"Wrote {', '.join(sorted(p.name for p in figures.iterdir()))} to {figures},")
    print(f"and the images and embedding to the TensorBoard of {run_dir}")


if __name__ == "__main__":
    main()
