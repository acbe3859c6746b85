"""Draw docs/samples.png: the built-in shapes as the model sees them, a row per class.

    python scripts/draw_samples.py [OUTPUT.png]
    python scripts/draw_samples.py --images [FOLDER]

With --images it writes instead one image of each class to FOLDER (default samples/), as
PNG files of 32x32 pixels to try predict.py on: images of seed 1, which a run with the
default seed neither trains nor validates on.

Each row holds the first training images of one class with the default settings (seed 0,
32x32 pixels), enlarged without smoothing, and the class name. The README shows the
picture; draw it again after changing shapes.py (the template's tests check that the
picture in docs/ is what this script draws).
"""

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = PROJECT_ROOT / "docs" / "samples.png"
IMAGES = PROJECT_ROOT / "samples"
IMAGES_SEED = 1  # training uses the seed (0 by default), validation seed + 1_000_003
PER_CLASS, IMAGE_SIZE, SEED, ZOOM = 6, 32, 0, 2
LABEL_WIDTH, GAP = 100, 4
BACKGROUND, TEXT = (255, 255, 255), (0, 0, 0)


def _shapes():
    """The package's class names and image generator."""
    if str(PROJECT_ROOT) not in sys.path:  # the package, also without `pip install -e .`
        sys.path.insert(0, str(PROJECT_ROOT))
    from {{ cookiecutter.package_name }}.shapes import SHAPE_CLASSES, make_shapes

    return SHAPE_CLASSES, make_shapes


def draw_samples(per_class: int = PER_CLASS, image_size: int = IMAGE_SIZE, seed: int = SEED):
    """The picture, as a PIL image: a row per class of `per_class` images."""
    from PIL import Image, ImageDraw, ImageFont

    SHAPE_CLASSES, make_shapes = _shapes()
    # Classes are balanced and shuffled: 20 images per class are plenty to find the first few.
    images, labels = make_shapes(20 * per_class * len(SHAPE_CLASSES), image_size, seed)
    tile = image_size * ZOOM
    width = LABEL_WIDTH + per_class * (tile + GAP)
    picture = Image.new("RGB", (width, len(SHAPE_CLASSES) * (tile + GAP) + GAP), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    # The bitmap font built into Pillow: the same pixels on every machine.
    font = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()
    for row, name in enumerate(SHAPE_CLASSES):
        top = GAP + row * (tile + GAP)
        draw.text((GAP, top + tile // 2 - 5), name, fill=TEXT, font=font)
        chosen = (labels == row).nonzero().squeeze(1)[:per_class]
        for column, index in enumerate(chosen.tolist()):
            pixels = images[index].permute(1, 2, 0).contiguous().numpy()
            sample = Image.fromarray(pixels).resize((tile, tile), Image.Resampling.NEAREST)
            picture.paste(sample, (LABEL_WIDTH + column * (tile + GAP), top))
    return picture


USAGE = "usage: python scripts/draw_samples.py [OUTPUT.png] | --images [FOLDER]"


def write_class_images(folder: Path, image_size: int = IMAGE_SIZE, seed: int = IMAGES_SEED):
    """One image of each class, `folder`/<class>.png; returns the paths written."""
    from PIL import Image

    shape_classes, make_shapes = _shapes()
    images, labels = make_shapes(20 * len(shape_classes), image_size, seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, name in enumerate(shape_classes):
        first = int((labels == index).nonzero()[0])
        pixels = images[first].permute(1, 2, 0).contiguous().numpy()
        Image.fromarray(pixels).save(folder / f"{name}.png", format="PNG", optimize=True)
        written.append(folder / f"{name}.png")
    return written


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{USAGE}\n\n{__doc__.splitlines()[0]} (default: docs/samples.png)")
        return 0
    if argv[:1] == ["--images"]:
        return _write_images(argv[1:])
    problem = None
    if len(argv) > 1:
        problem = "too many arguments"
    elif argv and argv[0].startswith("-"):
        problem = f"unknown option {argv[0]!r}"
    elif argv and Path(argv[0]).suffix.lower() != ".png":
        problem = f"{argv[0]!r} does not end in .png; the picture is a PNG file"
    if problem is not None:
        print(f"error: {problem}; {USAGE}", file=sys.stderr)
        return 2
    output = Path(argv[0]) if argv else OUTPUT
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        draw_samples().save(output, format="PNG", optimize=True)
    except OSError as error:
        print(f"error: cannot write {output} ({error.strerror or error})", file=sys.stderr)
        return 1
    print(output)
    return 0


def _write_images(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print(f"error: --images takes one FOLDER at most; {USAGE}", file=sys.stderr)
        return 2
    folder = Path(argv[0]) if argv else IMAGES
    try:
        written = write_class_images(folder)
    except OSError as error:
        print(f"error: cannot write {folder} ({error.strerror or error})", file=sys.stderr)
        return 1
    print(f"{folder}: {len(written)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
