"""vaelab.batches: data.binarize=dynamic (0/1 pixels, drawn anew for each training batch, once
for val and test), and the DataLoader's batches resuming mid-epoch, sharded under DDP."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import Dataset

from vaelab import UserError
from vaelab.batches import InMemoryBatches, LoaderBatches
from vaelab.data import MNISTDataModule
from vaelab.train import train

from ..conftest import TINY_TEST, compose_train


def epoch(batches: InMemoryBatches) -> torch.Tensor:
    """One epoch's images, in the order they were served."""
    return torch.cat([images for images, labels in batches])


def unlabelled(n: int) -> torch.Tensor:
    return torch.full((n,), -1)


def test_training_batches_are_drawn_anew_each_epoch() -> None:
    intensities = torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    batches = InMemoryBatches(intensities, unlabelled(50), 20, shuffle=False, binarize=True)
    first, second = epoch(batches), epoch(batches)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    # Bernoulli(intensity): over many epochs, each pixel is 1 as often as its intensity says
    frequencies = torch.stack([epoch(batches) for _ in range(400)]).mean(0)
    assert (frequencies - intensities).abs().mean() < 0.03
    # repeatable from the seed; another seed draws other pixels
    same, other = (
        InMemoryBatches(intensities, unlabelled(50), 20, False, seed, binarize=True)
        for seed in (0, 1)
    )
    assert torch.equal(epoch(same), first) and not torch.equal(epoch(other), first)


def test_binarized_batches_resume_where_training_stood() -> None:
    intensities = torch.rand(30, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(30)

    def batches() -> InMemoryBatches:
        return InMemoryBatches(intensities, labels, 7, shuffle=True, seed=3, binarize=True)

    reference = epoch(batches())
    interrupted = batches()
    iterator = iter(interrupted)
    trained = [images for images, _ in (next(iterator) for _ in range(2))]
    resumed = batches()
    resumed.load_state_dict(interrupted.state_dict())
    assert torch.equal(torch.cat([*trained, epoch(resumed)]), reference)


def test_val_and_test_are_binarized_once_with_a_fixed_seed(tiny_mnist: Path) -> None:
    def setup(**kwargs: object) -> MNISTDataModule:
        datamodule = MNISTDataModule(str(tiny_mnist), batch_size=32, val_size=64, **kwargs)
        datamodule.setup("fit")
        return datamodule

    plain, dynamic = setup(), setup(binarize="dynamic", seed=1)
    pairs = [(dynamic.val_images, plain.val_images), (dynamic.test_images, plain.test_images)]
    for images, intensities in pairs:
        assert set(images.unique().tolist()) == {0.0, 1.0}
        assert ((intensities > 0) & (intensities < 1)).any()  # the plain images are not 0/1
        assert (images[intensities == 0] == 0).all() and (images[intensities == 1] == 1).all()
        assert 0.5 < images.mean() / intensities.mean() < 1.5
    # the same images in every epoch and in every run, whatever its seed
    assert torch.equal(epoch(dynamic.val_dataloader()), dynamic.val_images)
    assert torch.equal(epoch(dynamic.test_dataloader()), epoch(dynamic.test_dataloader()))
    other_run = setup(binarize="dynamic", seed=2)
    assert torch.equal(other_run.val_images, dynamic.val_images)
    assert torch.equal(other_run.test_images, dynamic.test_images)
    # training batches: 0/1 and new in each epoch
    loader = dynamic.train_dataloader()
    first, second = epoch(loader), epoch(loader)
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, second)
    served = epoch(plain.train_dataloader())
    assert torch.equal(served.sort(0).values, plain.train_images.sort(0).values)


def test_test_labels_belong_to_the_test_images(tiny_mnist: Path) -> None:
    datamodule = MNISTDataModule(str(tiny_mnist), val_size=64)
    datamodule.setup("test")
    labels = datamodule.test_labels
    assert labels.shape == (TINY_TEST,) and labels.dtype == torch.int64
    # the tiny digits' label is the row of their bright bar, rows 4 + 2 * label and the next
    bar_row = datamodule.test_images.mean(-1).squeeze(1).argmax(-1)  # (N, 1, 28, 28) -> (N,)
    assert torch.equal((bar_row - 4) // 2, labels)
    # and the test batches pair each image with its label
    served = torch.cat([labels for _, labels in datamodule.test_dataloader()])
    assert torch.equal(served, labels)


def test_an_unknown_binarize_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="binarize='static' is invalid: use none or dynamic"):
        MNISTDataModule(binarize="static")
    overrides = [f"data.data_dir={tmp_path / 'no-data'}", "data.binarize=static"]
    with pytest.raises(UserError, match="data.binarize='static' is invalid: use none or dynamic"):
        train(compose_train(overrides, tmp_path))


def test_the_config_reaches_the_datamodule(tmp_path: Path) -> None:
    assert compose_train([], tmp_path).data.binarize == "none"
    datamodule = instantiate(compose_train(["data.binarize=dynamic"], tmp_path).data)
    assert datamodule.hparams.binarize == "dynamic"


class Numbers(Dataset):
    """Example i is the image (i,) with the label i."""

    def __len__(self) -> int:
        return 23

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(index)]), index


def loader(**settings: object) -> LoaderBatches:
    return LoaderBatches(Numbers(), 5, shuffle=True, seed=3, **settings)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_resumes_with_the_rest_of_the_epoch(workers: int) -> None:
    """Interrupted after 2 of an epoch's 5 batches (with workers that read ahead), a new
    loader given the state serves the other 3, then the next epoch as an uninterrupted one;
    the order of each epoch is the in-memory batches' for the same seed."""
    reference = loader()
    first, second = epoch(reference), epoch(reference)
    in_memory = InMemoryBatches(torch.arange(23.0).view(23, 1), torch.arange(23), 5, True, 3)
    assert torch.equal(first, epoch(in_memory)) and torch.equal(second, epoch(in_memory))
    interrupted = loader(num_workers=workers)
    batches = iter(interrupted)
    trained = [next(batches) for _ in range(2)]
    assert interrupted.state_dict() == {"epoch": 0, "batch": 2}  # not what workers fetched
    resumed = loader(num_workers=workers)
    resumed.load_state_dict(interrupted.state_dict())
    rest = list(resumed)
    assert len(rest) == 3 and all(torch.equal(x.flatten().long(), y) for x, y in trained + rest)
    assert torch.equal(torch.cat([x for x, _ in trained + rest]), first)
    assert torch.equal(epoch(resumed), second)


def test_each_process_reads_its_shard_of_each_epoch() -> None:
    """Under DDP (world_size 2): the two shards split the epoch's order as DistributedSampler
    does, padded with its first example, and each resumes on its own."""
    whole = loader().order(0)
    shards = [loader(rank=rank, world_size=2) for rank in (0, 1)]
    served = [epoch(shard).flatten().long() for shard in shards]
    assert [len(s) for s in served] == [12, 12]
    padded = torch.cat([whole, whole[:1]])
    assert torch.equal(served[0], padded[0::2]) and torch.equal(served[1], padded[1::2])
    interrupted = loader(rank=1, world_size=2)
    batches = iter(interrupted)
    trained = next(batches)[0]
    resumed = loader(rank=1, world_size=2)
    resumed.load_state_dict(interrupted.state_dict())
    assert torch.equal(torch.cat([trained, epoch(resumed)]).flatten().long(), served[1])
