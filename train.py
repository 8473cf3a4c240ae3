"""Train a VAE: `python train.py model.latent_size=20`, or sweep with `-m`.

The config lives in conf/ (start at conf/train.yaml); each run writes to its own folder
in outputs/, which `tensorboard --logdir outputs` shows.
"""

import time

import hydra
from omegaconf import DictConfig, OmegaConf

from vaelab.config import folder_name

# A sweep job's folder is named after its overrides (hydra.sweep.subdir in conf/train.yaml).
OmegaConf.register_new_resolver("folder_name", folder_name)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    start = time.perf_counter()
    # Imported here, after Hydra has checked the command line, so a typo fails at once
    # rather than after the seconds it takes to import Lightning.
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from vaelab.console import one_line_errors
    from vaelab.runs import FolderRefused
    from vaelab.train import train, write_summary

    with one_line_errors():  # a UserError, as one line
        try:
            return train(cfg)
        except SIGTERMException:  # Lightning stopped after a batch; last.ckpt holds the state
            raise SystemExit(128 + 15) from None  # the usual status of a process ended so
        except FolderRefused:  # the folder, and any metrics.json in it, belong to another run
            raise
        except Exception as err:  # recorded for scripts/summarize.py, then reported by Hydra
            write_summary(cfg, "failed", start, reason=f"{type(err).__name__}: {err}")
            raise


if __name__ == "__main__":
    main()
