"""Cut photographs into 32 x 32 RGB patches as an image folder, whole photographs held out for
test, and measure the bits per dimension that lossless PNG and WebP spend on the test patches.

    python scripts/make_patches.py data/patches            # scikit-image's photographs
    python scripts/make_patches.py data/patches --photos my/photos --test-photos cat dog

Writes <out>/train/<photo>_<row>_<col>.png and <out>/test/... (flat: data=image_folder holds
val out of train) and <out>/manifest.json: which photograph went where, its patches, and the
reference. Patches are non-overlapping and grid-aligned; the right and bottom margins that
do not fill a patch are dropped. Only RGB photographs are cut: a greyscale one would give
patches whose three channels are copies (two thirds of the dimensions free for any coder),
and the RGBA ones scikit-image ships are drawings. The default photographs need
`pip install scikit-image`.

The reference needs no model: the test patches tiled in a grid (by photograph, then row by
row; empty slots black, their few bytes counted) as one image, saved as PNG (optimize=True)
and as lossless WebP (quality=100, method=6; if Pillow has WebP); bits per dimension =
8 * file bytes / (patches * 32 * 32 * 3). Also, for information, each test patch as a PNG
file of its own.
"""

import argparse
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, features

SIZE = 32
SUFFIXES = {".png", ".jpg", ".jpeg"}
# scikit-image's held-out photographs: a cat (fur, smooth background) and stained tissue under
# a microscope (a texture); 126 + 256 test patches. The stereo pair motorcycle_left/right is
# two views of one scene, so both stay in training.
TEST_PHOTOS = ["chelsea", "ihc"]
# Not photographs: a synthetic chessboard, the Shepp-Logan phantom, a colour wheel.
EXCLUDED = ["chessboard_RGB", "phantom", "color"]


def skimage_photos() -> Path:
    """The folder of photographs inside the installed scikit-image wheel."""
    try:
        import skimage
    except ImportError:
        raise SystemExit(
            "Error: scikit-image is not installed; `pip install scikit-image`, or give --photos DIR"
        ) from None
    return Path(skimage.__file__).parent / "data"


def cut(image: np.ndarray) -> np.ndarray:
    """An image's grid-aligned SIZE x SIZE patches: (H, W, 3) -> (R, C, S, S, 3)."""
    rows, cols = image.shape[0] // SIZE, image.shape[1] // SIZE
    grid = image[: rows * SIZE, : cols * SIZE].reshape(rows, SIZE, cols, SIZE, 3)
    return grid.transpose(0, 2, 1, 3, 4)  # (R, S, C, S, 3) -> (R, C, S, S, 3)


def mosaic(patches: np.ndarray) -> np.ndarray:
    """Patches tiled row by row in a grid ceil(sqrt(N)) wide, empty slots black:
    (N, S, S, 3) -> (rows * S, cols * S, 3)."""
    cols = math.ceil(math.sqrt(len(patches)))
    rows = math.ceil(len(patches) / cols)
    slots = np.zeros((rows * cols, SIZE, SIZE, 3), np.uint8)
    slots[: len(patches)] = patches
    grid = slots.reshape(rows, cols, SIZE, SIZE, 3).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * SIZE, cols * SIZE, 3)  # (R, S, C, S, 3) -> (R*S, C*S, 3)


def encoded_bytes(image: np.ndarray, format: str) -> int:
    """The size of a lossless encoding of an RGB image, checked to decode to the same pixels."""
    options = {"PNG": {"optimize": True}, "WEBP": {"lossless": True, "quality": 100, "method": 6}}
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=format, **options[format])
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    assert np.array_equal(decoded, image), f"{format} was not lossless"
    return buffer.tell()


def reference(patches: np.ndarray) -> dict[str, float | int]:
    """Bits per dimension of lossless codecs on these patches: as one mosaic, and one by one."""
    dims = patches.size
    tiles = mosaic(patches)
    result: dict[str, float | int] = {"patches": len(patches), "dims": dims}
    result["png_mosaic_bytes"] = encoded_bytes(tiles, "PNG")
    result["png_mosaic_bpd"] = 8 * result["png_mosaic_bytes"] / dims
    if features.check("webp"):
        result["webp_mosaic_bytes"] = encoded_bytes(tiles, "WEBP")
        result["webp_mosaic_bpd"] = 8 * result["webp_mosaic_bytes"] / dims
    result["png_per_patch_bytes"] = sum(encoded_bytes(patch, "PNG") for patch in patches)
    result["png_per_patch_bpd"] = 8 * result["png_per_patch_bytes"] / dims
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the image folder to write")
    parser.add_argument("--photos", type=Path, help="default: scikit-image's data folder")
    parser.add_argument("--test-photos", nargs="+", default=TEST_PHOTOS, metavar="NAME")
    parser.add_argument("--exclude", nargs="*", default=EXCLUDED, metavar="NAME")
    parser.add_argument("--overwrite", action="store_true", help="replace <out>'s patches")
    args = parser.parse_args()
    photos_dir = args.photos or skimage_photos()
    if not photos_dir.is_dir():
        raise SystemExit(f"Error: --photos {photos_dir} is not a folder; give a folder of photos")
    files = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in SUFFIXES)
    names = [p.stem for p in files]
    for name in args.test_photos:
        if name not in names:
            raise SystemExit(f"Error: --test-photos {name} is not in {photos_dir}; use {names}")
    if args.out.exists() and any(args.out.iterdir()):
        if not args.overwrite:
            raise SystemExit(f"Error: {args.out} is not empty; give --overwrite to replace it")
        for old in ("train", "test", "manifest.json"):
            if (args.out / old).is_dir():
                shutil.rmtree(args.out / old)
            (args.out / old).unlink(missing_ok=True)
        print(f"--overwrite: removed the train/, test/ and manifest.json of {args.out}")

    manifest: dict = {"patch_size": SIZE, "photos_dir": str(photos_dir), "photos": {}}
    test_patches = []
    for path in files:
        if path.stem in args.exclude:
            print(f"skipped {path.name}: excluded (--exclude), not a photograph")
            continue
        try:  # decoded here, so that a truncated file or a decompression bomb is skipped too
            image = Image.open(path)
            image.load()
        except (OSError, Image.DecompressionBombError) as err:  # UnidentifiedImageError too
            print(f"skipped {path.name}: not readable as an image ({err})")
            continue
        if image.mode != "RGB" or min(image.size) < SIZE:
            why = "not RGB" if image.mode != "RGB" else f"smaller than {SIZE} x {SIZE}"
            if path.stem in args.test_photos:
                raise SystemExit(f"Error: --test-photos {path.stem} is {why}; choose another")
            print(f"skipped {path.name}: {image.mode}, {image.width} x {image.height}, {why}")
            continue
        split = "test" if path.stem in args.test_photos else "train"
        grid = cut(np.asarray(image))
        (args.out / split).mkdir(parents=True, exist_ok=True)
        for row in range(grid.shape[0]):
            for col in range(grid.shape[1]):
                name = f"{path.stem}_{row:02d}_{col:02d}.png"
                Image.fromarray(grid[row, col]).save(args.out / split / name)
        if split == "test":
            test_patches.append(grid.reshape(-1, SIZE, SIZE, 3))
        size, patches = f"{image.width} x {image.height}", grid.shape[0] * grid.shape[1]
        photo = {"file": path.name, "size": size, "split": split, "patches": patches}
        manifest["photos"][path.stem] = photo
    counts = {s: 0 for s in ("train", "test")}
    for name, photo in manifest["photos"].items():
        counts[photo["split"]] += photo["patches"]
        print(f"{photo['split']:5s} {name:24s} {photo['size']:>11s}  {photo['patches']:5d} patches")
    if not counts["train"]:
        raise SystemExit(f"Error: no RGB photograph of {photos_dir} is left for training")
    print(f"train: {counts['train']} patches, test: {counts['test']} patches")
    manifest["counts"] = counts
    manifest["reference"] = reference(np.concatenate(test_patches))
    for key, value in manifest["reference"].items():
        if key.endswith("_bpd"):
            print(f"reference on the test patches, {key}: {value:.4f}")
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
