"""Image collections for the recipe benchmark, generated: seeded, numpy and PIL only, no download.

    python bench/image_collections.py [--root bench/results/collections] [--only NAME ...]
        [--scale 1.0]

Each collection is a different kind of visual problem, written as class folders the way a
user's own images would be: `train/<class>/` + `val/<class>/`, or one folder of classes that
the project splits by `data.val_fraction`. Together they cover 2 to 20 classes, 100 to 20,000
images, 8 to 256 px, grayscale and RGB, PNG and JPEG, square and not, balanced and 10:1.
The drawings are in bench/drawings.py.

A collection is written to `<root>/<name>.partial` and renamed when complete, with a
`collection.json` that says what it holds; it is regenerated only when that file is missing
or describes another version, size or scale. (The module is not called `collections.py`:
a script run from bench/ would shadow the standard library's module of that name.)
"""

import argparse
import json
import shutil
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import drawings
import numpy as np
from PIL import Image

# Raise when a drawing changes, so that cached collections are made again.
VERSION = 1
DEFAULT_ROOT = Path(__file__).resolve().parent / "results" / "collections"
VAL_SHARE = 0.2  # of each class, in val/, for the collections with a train/+val/ layout


@dataclass(frozen=True)
class Collection:
    name: str
    kind: str  # what the visual problem is, in a few words
    classes: tuple[str, ...]
    counts: tuple[int, ...]  # images of each class, train and val together
    size: tuple[int, int]  # width, height in pixels
    mode: str  # PIL mode of the files: "L" (grayscale) or "RGB"
    format: str  # "png" or "jpeg"
    has_val: bool  # train/ + val/ folders, or one folder of class folders
    draw: Callable  # draw(rng, label, width, height) -> float array in [0, 1]
    # Every n-th image stored turned a quarter, with the EXIF orientation that turns it
    # back, as phones store photos taken upright or sideways (0: none)
    exif_turned_every: int = 0

    @property
    def images(self) -> int:
        return sum(self.counts)

    def describe(self) -> str:
        """One line for a table: classes, images, size, mode, format, layout."""
        width, height = self.size
        pixels = f"{width} px" if width == height else f"{width}x{height} px"
        balance = (
            "" if len(set(self.counts)) == 1 else f" ({max(self.counts) // min(self.counts)}:1)"
        )
        layout = "train/+val/" if self.has_val else "one folder"
        mode = "gray" if self.mode == "L" else "RGB"
        turned = f", 1 in {self.exif_turned_every} EXIF-turned" if self.exif_turned_every else ""
        return (
            f"{len(self.classes)} classes{balance}, {self.images:,} images, {pixels}, {mode}, "
            f"{self.format.upper()}{turned}, {layout}"
        )


COLLECTIONS = (
    Collection(
        "textures", "textures: stripes, checks, rings, dots, blotches",
        ("stripes-h", "stripes-v", "checks", "rings", "dots", "blotches"), (200,) * 6,
        size=(32, 32), mode="L", format="png", has_val=False, draw=drawings.draw_texture,
    ),
    Collection(
        "glyphs", "digits with affine jitter; a mirrored 2 is a 5",
        tuple(str(digit) for digit in range(10)), (300,) * 10,
        size=(28, 28), mode="L", format="png", has_val=True, draw=drawings.draw_glyph,
    ),
    Collection(
        "hues", "hue of the largest blob, among clutter",
        tuple(f"hue{45 * sector:03d}" for sector in range(8)), (200,) * 8,
        size=(40, 40), mode="RGB", format="jpeg", has_val=False, draw=drawings.draw_hue_blob,
    ),
    Collection(
        "shapes", "shapes at any scale, place and turn, clutter lines",
        drawings.SHAPE_NAMES, (400,) * 5,
        size=(64, 48), mode="RGB", format="jpeg", has_val=True,
        draw=drawings.draw_scattered_shape,
    ),
    Collection(
        "icons20", "small icons: shape x colour",
        tuple(f"{hue}-{shape}" for hue in drawings.ICON_HUES for shape in drawings.ICON_SHAPES),
        (1000,) * 20,
        size=(16, 16), mode="RGB", format="png", has_val=True, draw=drawings.draw_icon,
    ),
    Collection(
        "tiny", "a faint dot or dash in noise", ("dot", "dash"), (50, 50),
        size=(8, 8), mode="L", format="png", has_val=False, draw=drawings.draw_dot_or_dash,
    ),
    Collection(
        "scenes", "scenes, a fainter second one over each",
        ("horizon", "trunks", "waves", "flowers"), (100,) * 4,
        size=(256, 192), mode="RGB", format="jpeg", has_val=True, draw=drawings.draw_scene,
    ),
    Collection(
        "defects", "faint surface defects, imbalanced", ("fine", "scratch", "spot"),
        (1000, 300, 100),
        size=(40, 40), mode="L", format="png", has_val=False, draw=drawings.draw_defect,
    ),
    Collection(
        "photos", "photos of small objects, some stored sideways (EXIF)",
        drawings.SHAPE_NAMES, (240,) * 5,
        size=(320, 240), mode="RGB", format="jpeg", has_val=True,
        draw=drawings.draw_photo_object, exif_turned_every=4,
    ),
    Collection(
        "photos-large", "phone-size photos of small objects, some sideways",
        drawings.SHAPE_NAMES[:4], (150,) * 4,
        size=(640, 480), mode="RGB", format="jpeg", has_val=False,
        draw=drawings.draw_photo_object, exif_turned_every=3,
    ),
)  # fmt: skip
MIN_PER_CLASS = 5  # at a small --scale: enough for one validation image and a few to train


def by_name(names: list[str] | None) -> list[Collection]:
    """The collections named (all of them for None), in the order of COLLECTIONS."""
    known = {collection.name: collection for collection in COLLECTIONS}
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise SystemExit(f"unknown collections {unknown}; known: {', '.join(known)}")
    return [collection for collection in COLLECTIONS if names is None or collection.name in names]


def scaled_counts(collection: Collection, scale: float) -> list[int]:
    return [max(MIN_PER_CLASS, round(count * scale)) for count in collection.counts]


def manifest(collection: Collection, scale: float) -> dict:
    """What `collection.json` says about a complete collection."""
    return {
        "name": collection.name,
        "kind": collection.kind,
        "version": VERSION,
        "scale": scale,
        "classes": list(collection.classes),
        "counts": scaled_counts(collection, scale),
        "size": list(collection.size),
        "mode": collection.mode,
        "format": collection.format,
        "has_val": collection.has_val,
        # Only where set, so that the collections made before it stay valid.
        **(
            {"exif_turned_every": collection.exif_turned_every}
            if collection.exif_turned_every
            else {}
        ),
    }


def ensure(collection: Collection, root: Path, scale: float = 1.0) -> Path:
    """The folder of `collection` under `root`, generated unless already there and complete."""
    folder, expected = root / collection.name, manifest(collection, scale)
    done = folder / "collection.json"
    if done.is_file() and json.loads(done.read_text()) == expected:
        return folder
    partial = root / f"{collection.name}.partial"
    for stale in (folder, partial):
        shutil.rmtree(stale, ignore_errors=True)
    write_images(collection, partial, expected["counts"])
    (partial / "collection.json").write_text(json.dumps(expected, indent=1))
    partial.rename(folder)
    return folder


def write_images(collection: Collection, folder: Path, counts: list[int]) -> None:
    """Every image of every class; image i of a class is drawn from its own seeded generator,
    so a collection is the same on every machine and at every run. In a train/+val/ layout
    the first VAL_SHARE of each class goes to val/."""
    width, height = collection.size
    seed = zlib.crc32(collection.name.encode())
    suffix = "jpg" if collection.format == "jpeg" else "png"
    for label, (name, count) in enumerate(zip(collection.classes, counts, strict=True)):
        held_out = max(1, round(count * VAL_SHARE)) if collection.has_val else 0
        for split in {("val" if held_out else "."), "train" if collection.has_val else "."}:
            (folder / split / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            rng = np.random.default_rng([seed, label, index])
            split = ("val" if index < held_out else "train") if collection.has_val else "."
            pixels = collection.draw(rng, label, width, height)
            every = collection.exif_turned_every
            turned = bool(every) and index % every == every - 1
            save(pixels, collection, folder / split / name / f"{index:05d}.{suffix}", turned)


# EXIF orientation 6: a viewer turns the stored pixels a quarter clockwise to show them.
TURN_CLOCKWISE = 6


def save(pixels: np.ndarray, collection: Collection, path: Path, turned: bool = False) -> None:
    """Save as the collection's format; `turned`: the pixels stored a quarter turn
    anticlockwise, with the EXIF orientation that shows them upright again."""
    pixels = np.clip(np.asarray(pixels, dtype=np.float32), 0, 1)
    if collection.mode == "L" and pixels.ndim == 3:
        pixels = pixels.mean(axis=-1)
    image = Image.fromarray(np.round(pixels * 255).astype(np.uint8))
    options = {}
    if turned:
        image = image.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = TURN_CLOCKWISE
        options["exif"] = exif.tobytes()
    if collection.format == "jpeg":
        image.save(path, quality=90, **options)
    else:
        image.save(path, compress_level=1, **options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these collections only")
    parser.add_argument("--scale", type=float, default=1.0, help="share of each class's images")
    args = parser.parse_args()
    for collection in by_name(args.only):
        folder = ensure(collection, args.root, args.scale)
        print(f"{collection.name}: {collection.describe()} -> {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
