"""vaelab.resume, in-process on a tiny model: LastCheckpoint, RandomState, DivergenceStop."""

from pathlib import Path

import lightning as L
import pytest
import torch

from vaelab.errors import UserError
from vaelab.resume import DivergenceError, DivergenceStop, LastCheckpoint, RandomState

from ..helpers import SHAPE, TINY, ExplodingVAE, batches, mlp_vae, trainer


def exploding(at_step: int) -> ExplodingVAE:
    """The tiny model, its loss NaN from training step `at_step` on."""
    widths = {"hidden_sizes": [8]}
    encoder = {"_target_": "vaelab.networks.MLPEncoder", **widths}
    decoder = {"_target_": "vaelab.networks.MLPDecoder", **widths}
    return ExplodingVAE(at_step, encoder=encoder, decoder=decoder, latent_size=2, image_shape=SHAPE)


class SavedAt(L.Callback):
    """The global step of each checkpoint the trainer writes."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_save_checkpoint(self, trainer: L.Trainer, *args: object) -> None:
        self.steps.append(trainer.global_step)


def test_last_checkpoint_saves_every_n_steps_and_after_each_epoch(tmp_path: Path) -> None:
    """Five steps an epoch, every 2: steps 2 and 4, the epoch's end (5), 6 and 8, not 10 (the
    epoch's last batch, whose state the epoch's end saves after validation), then 10."""
    saved = SavedAt()
    last = LastCheckpoint(str(tmp_path), every_n_train_steps=2)
    trainer(tmp_path, [last, saved], max_epochs=2).fit(mlp_vae(**TINY), batches())
    assert saved.steps == [2, 4, 5, 6, 8, 10]
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 10


def test_last_checkpoint_keeps_where_max_steps_stops_inside_an_epoch(tmp_path: Path) -> None:
    last = LastCheckpoint(str(tmp_path), every_n_train_steps=0)
    trainer(tmp_path, [last], max_steps=3).fit(mlp_vae(**TINY), batches())
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    # Saved inside the epoch (Lightning counts the batch completed after its hooks), not as
    # the epoch's end, which would resume into the next epoch.
    assert (checkpoint["global_step"], checkpoint["epoch"]) == (3, 0)
    assert progress["current"]["processed"] == 3 and not progress["is_last_batch"]


@pytest.mark.parametrize("every", [-1, -500])
def test_last_checkpoint_refuses_a_negative_period(tmp_path: Path, every: int) -> None:
    with pytest.raises(UserError, match=f"every_n_train_steps={every} is invalid: use 0"):
        LastCheckpoint(str(tmp_path), every_n_train_steps=every)


def test_random_state_goes_on_from_the_saved_state(tmp_path: Path) -> None:
    torch.manual_seed(3)
    state = RandomState().state_dict()
    expected = torch.rand(5)
    torch.manual_seed(99)  # what a resumed process would have instead
    resumed = RandomState()
    resumed.load_state_dict(state)
    resumed.on_train_start(None, None)  # type: ignore[arg-type]  # reads neither
    assert torch.equal(torch.rand(5), expected)
    torch.manual_seed(99)
    resumed.on_train_start(None, None)  # type: ignore[arg-type]  # once only: nothing to restore
    assert not torch.equal(torch.rand(5), expected)


def test_divergence_stop_names_the_step_and_the_last_good_checkpoint(tmp_path: Path) -> None:
    model = exploding(at_step=3)
    last = LastCheckpoint(str(tmp_path), every_n_train_steps=2)
    saved = SavedAt()
    with pytest.raises(DivergenceError) as caught:
        trainer(tmp_path, [last, DivergenceStop(), saved], max_epochs=2).fit(model, batches())
    message = str(caught.value)
    assert "not finite at step 3" in message and str(tmp_path / "last.ckpt") in message
    assert "smaller model.lr" in message
    assert saved.steps == [2]  # the save at step 4 found the divergence first
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 2


def test_divergence_at_the_first_step_points_at_the_data_and_settings(tmp_path: Path) -> None:
    model = exploding(at_step=0)
    with pytest.raises(DivergenceError, match="at step 0, .* none was saved. Check the data"):
        trainer(tmp_path, [DivergenceStop()]).fit(model, batches())
