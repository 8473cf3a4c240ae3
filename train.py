"""Train a VAE on MNIST: `python train.py model.latent_size=20`, or sweep with `-m`.

The config lives in conf/ (start at conf/train.yaml); each run writes to its own folder
in outputs/, which `tensorboard --logdir outputs` shows.
"""

import hydra
from omegaconf import DictConfig

from vaelab import UserError


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    # Imported here, after Hydra has checked the command line, so a typo fails at once
    # rather than after the seconds it takes to import Lightning.
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from vaelab.train import train

    try:
        return train(cfg)
    except UserError as err:  # a setup or config mistake, not a bug: the message, no traceback
        raise SystemExit(f"Error: {err}") from None
    except SIGTERMException:  # Lightning stopped after a batch; last.ckpt holds the state
        raise SystemExit(128 + 15) from None  # the usual status of a process ended by SIGTERM


if __name__ == "__main__":
    main()
