"""scripts/make_patches.py on a few tiny synthetic photographs: the split, the refusal to
overwrite, and the lossless codecs' bits per dimension."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from ..conftest import run_script

pytestmark = pytest.mark.slow  # every test runs scripts/make_patches.py
# A new interpreter (fresh=True): this script imports neither torch nor Lightning, and a
# 0.1 s start beats the warm server's fork, whose exit tears down torch (~1.5 s a run).


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Noisy RGB photographs of 3 x 2 and 1 x 2 patches (with margins), a greyscale one and one
    smaller than a patch."""
    folder = tmp_path_factory.mktemp("photos")
    noise = np.random.default_rng(0)
    for name, (height, width) in {"wide": (100, 70), "held": (40, 64), "tiny": (20, 40)}.items():
        pixels = noise.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels[: height // 2] //= 8  # parts easier to compress than others
        Image.fromarray(pixels).save(folder / f"{name}.png")
    Image.fromarray(noise.integers(0, 256, (64, 64), dtype=np.uint8)).save(folder / "grey.png")
    whole = (folder / "grey.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])  # its header reads fine
    return folder


def test_whole_photographs_are_held_out_and_cut_into_patches(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "patches"
    result = run_script(
        "make_patches", str(out), "--photos", str(photos), "--test-photos", "held", fresh=True
    )
    assert result.returncode == 0, result.stderr
    train = sorted(p.name for p in (out / "train").iterdir())
    test = sorted(p.name for p in (out / "test").iterdir())
    assert train == [f"wide_{r:02d}_{c:02d}.png" for r in range(3) for c in range(2)]
    assert test == ["held_00_00.png", "held_00_01.png"]  # and none of it in train
    wide = np.asarray(Image.open(photos / "wide.png"))
    patch = np.asarray(Image.open(out / "train" / "wide_02_01.png"))
    assert np.array_equal(patch, wide[64:96, 32:64])  # row 2, column 1, pixels unchanged
    assert "skipped grey.png: L" in result.stdout and "skipped tiny.png" in result.stdout
    assert "skipped truncated.png: not readable as an image" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 6, "test": 2}
    assert {name: p["split"] for name, p in manifest["photos"].items()} == {
        "wide": "train",
        "held": "test",
    }

    # The reference, computed again: the two test patches side by side, one PNG (and one WebP)
    reference, dims = manifest["reference"], 2 * 32 * 32 * 3
    tiles = Image.new("RGB", (64, 32))
    for column, name in enumerate(test):
        tiles.paste(Image.open(out / "test" / name), (32 * column, 0))
    codecs = {"png": ("PNG", {"optimize": True})}
    if features.check("webp"):
        codecs["webp"] = ("WEBP", {"lossless": True, "quality": 100, "method": 6})
    for codec, (format, options) in codecs.items():
        buffer = io.BytesIO()
        tiles.save(buffer, format=format, **options)
        assert reference[f"{codec}_mosaic_bpd"] == 8 * buffer.tell() / dims
    assert 4 < reference["png_mosaic_bpd"] < 8  # half noise, half noise of 5 bits

    # An existing folder is refused, untouched, unless --overwrite
    again = ["make_patches", str(out), "--photos", str(photos), "--test-photos", "wide"]
    refused = run_script(*again, fresh=True)
    assert refused.returncode != 0 and "--overwrite" in refused.stderr
    assert sorted(p.name for p in (out / "test").iterdir()) == test
    replaced = run_script(*again, "--overwrite", fresh=True)
    assert replaced.returncode == 0, replaced.stderr
    assert len(list((out / "test").iterdir())) == 6 and len(list((out / "train").iterdir())) == 2
