"""Train a VAE: `python train.py model.latent_size=20`, or sweep with `-m`.

The config lives in conf/ (start at conf/train.yaml); each run writes to its own folder
in outputs/, which `tensorboard --logdir outputs` shows. What a run does: vaelab/train.py.
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from vaelab.config import folder_name

# A sweep job's folder is named after its overrides (hydra.sweep.subdir in conf/train.yaml).
OmegaConf.register_new_resolver("folder_name", folder_name)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    # Imported here, after Hydra has checked the command line, so a typo fails at once
    # rather than after the seconds it takes to import Lightning.
    from vaelab.train import main as train

    return train(cfg)


if __name__ == "__main__":
    main()
