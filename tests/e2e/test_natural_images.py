"""End to end on an image folder read by a DataLoader, with the ResNet parts and the discretized
logistic: killed mid-epoch and resumed, the run ends as an uninterrupted one; then evaluate.py
and visualize.py on its checkpoint."""

from pathlib import Path

import pytest
import torch

from ..conftest import final_metrics, run_script, run_train

pytestmark = pytest.mark.slow

# 48 images of 8 x 8: 32 train in 4 batches of 8, 8 val, 8 test; last.ckpt every 2 steps.
RUN = [
    "data=image_folder",
    "data.image_size=8",
    "data.val_size=8",
    "data.test_size=8",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "data.num_workers=0",
    "model/likelihood=discretized_logistic",
    "model.likelihood.num_mixtures=2",
    "model/encoder=resnet",
    "model/decoder=resnet",
    *(
        f"model.{net}.{key}=4"
        for net in ("encoder", "decoder")
        for key in ("channels", "max_channels")
    ),
    "model.latent_size=2",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "callbacks.last_checkpoint.every_n_train_steps=2",
    "callbacks.progress_bar.refresh_rate=0",
    "print_config=false",
]


def test_an_image_folder_run_resumes_exactly_and_the_scripts_read_it(
    tiny_images: Path, tmp_path: Path
) -> None:
    folder = f"data.path={tiny_images / 'flat'}"
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_train(folder, *RUN, f"hydra.run.dir={whole}").returncode == 0
    kill = ["+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=7"]
    assert run_train(folder, *RUN, f"hydra.run.dir={killed}", *kill).returncode != 0
    last = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    # Saved after step 6, two batches into epoch 1: the rest of it is served on resuming.
    assert last["global_step"] == 6
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batch": 2}]
    assert last["datamodule_target"] == "vaelab.data.ImageFolderDataModule"
    resumed = run_train(folder, *RUN, f"hydra.run.dir={killed}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # lr-Adam is logged as an epoch starts, which the resumed run (in epoch 1) never sees.
    expected = {name: value for name, value in final_metrics(whole).items() if name != "lr-Adam"}
    assert final_metrics(killed) == expected
    weights = [
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True) for run in (whole, killed)
    ]
    assert all(
        torch.equal(weights[0]["state_dict"][k], t) for k, t in weights[1]["state_dict"].items()
    )

    evaluated = run_script("evaluate", f"run_dir={killed}", "iw_samples=3")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "test/nll_iw_bpd" in evaluated.stdout and "8 test images" in evaluated.stdout
    drawn = run_script("visualize", f"run_dir={killed}", "embedding_size=4")
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    assert {"reconstructions.png", "samples.png"} <= {
        p.name for p in (killed / "figures").iterdir()
    }
