"""Train a VAE on MNIST: `python train.py model.latent_size=20`, or sweep with `-m`.

The config lives in conf/ (start at conf/train.yaml); each run writes to its own folder
in outputs/, which `tensorboard --logdir outputs` shows.
"""

import hashlib
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from vaelab.runs import quote_paths


def run_name(overrides: str, limit: int = 150) -> str:
    """A sweep job's folder name from its overrides, cut to stay within file-name limits."""
    if len(overrides) <= limit:
        return overrides
    return f"{overrides[:limit]}...{hashlib.md5(overrides.encode()).hexdigest()[:8]}"


OmegaConf.register_new_resolver("run_name", run_name)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    # Imported here, after Hydra has checked the command line, so a typo fails at once
    # rather than after the seconds it takes to import Lightning.
    from vaelab.train import run

    return run(cfg)


if __name__ == "__main__":
    sys.argv[1:] = quote_paths(sys.argv[1:])  # so sweep folders, named a=b,c=d, can be given
    main()
