"""Property tests (hypothesis) of the user's image folders: whatever tree of files data.root
holds (text files, empty files, cut-off images, wrong extensions, every common PIL mode and
bit depth, hidden folders, nesting, unicode and odd names, one class, empty class folders,
loose files), the data either builds and serves its batches or stops with one ConfigError
line; train.run either trains or ends with one `error:` line and a non-zero exit. Never a
traceback.

Most examples exercise the data layer in-process, built and loaded the way train.py does
it; fewer go end to end through train.run. The examples are derandomized and no database
is kept, so CI sees the same trees on every run.
"""

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_OVERRIDES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from {{ cookiecutter.package_name }}.config import ConfigError, DataConfig
from {{ cookiecutter.package_name }}.data import build_datasets, build_loader, is_hidden

# Left out of the quick subset (pytest -m "not slow"): every test here is a property test:
# hypothesis draws hundreds of image trees.
pytestmark = pytest.mark.slow


def examples(count: int) -> settings:
    # No deadline and no health checks: a loaded CI machine must not turn slowness into a
    # failure. derandomize: the same examples on every run, a failure reproducible.
    return settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# Letters of several scripts, digits, spaces, punctuation that shells and URLs treat
# specially, an emoji, a line break: anything a file name may hold but "/" and NUL.
NAME_CHARACTERS = "abcXYZ019 _-#%&'()+,;=@[]{}~$!äßéñ中文αβ🙂\n"
# Names that mean something to the scan: hidden, macOS's archive folder, the split folders.
SPLITS = ("train", "val")
SPECIAL_NAMES = (" spaced ", ".ipynb_checkpoints", "-x", "__MACOSX", "train", ".hidden", "val")
# One name in eight is special (hypothesis starts from the first choice of each list).
names = (
    st.integers(0, 7)
    .flatmap(
        lambda n: (
            st.sampled_from(SPECIAL_NAMES)
            if n == 7
            else st.text(NAME_CHARACTERS, min_size=1, max_size=8)
        )
    )
    .filter(lambda name: name not in (".", ".."))
)

# mode -> the formats that can hold it, as PIL writes them.
IMAGE_FORMATS = {
    "1": ("PNG", "BMP", "TIFF"),
    "L": ("PNG", "JPEG", "BMP", "GIF", "TIFF"),
    "LA": ("PNG", "TIFF"),
    "P": ("PNG", "GIF", "BMP", "TIFF"),
    "RGB": ("PNG", "JPEG", "BMP", "WEBP", "TIFF", "PPM"),
    "RGBA": ("PNG", "WEBP", "TIFF"),
    "I;16": ("PNG", "TIFF"),
    "I;16B": ("TIFF",),
    "I": ("TIFF",),
    "F": ("TIFF",),
    "CMYK": ("JPEG", "TIFF"),
}
SUFFIXES = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "BMP": ".bmp",
    "GIF": ".gif",
    "TIFF": ".tif",
    "WEBP": ".webp",
    "PPM": ".ppm",
}


def encoded_image(mode: str, image_format: str, size: tuple[int, int], seed: int) -> bytes:
    """A noise image of `mode` and `size` as the bytes of an `image_format` file."""
    generator = np.random.default_rng(seed)
    shape = (size[1], size[0])
    if mode == "F":  # floats in [0, 1], [0, 255] or [0, 65535]
        scale = (1.0, 255.0, 65535.0)[seed % 3]
        image = Image.fromarray((generator.random(shape) * scale).astype(np.float32))
    elif mode in ("I;16", "I;16B", "I"):
        pixels = generator.integers(0, 65536, shape)
        dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
        image = Image.frombytes(mode, size, pixels.astype(dtype).tobytes())
    else:
        pixels = generator.integers(0, 256, (*shape, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


# Images in a class folder (hypothesis starts from the first choice of each list).
IMAGE_COUNTS = [3, 2, 4, 3, 2, 4, 1, 0]
# Mostly larger than the crop, sometimes much smaller.
sides = st.sampled_from([24, 16, 40, 33, 9, 5, 1])


@st.composite
def images(draw) -> tuple[str, bytes]:
    """(suffix, contents) of an image file of any mode, format and size."""
    mode = draw(st.sampled_from(sorted(IMAGE_FORMATS)))
    image_format = draw(st.sampled_from(IMAGE_FORMATS[mode]))
    size = (draw(sides), draw(sides))
    return SUFFIXES[image_format], encoded_image(
        mode, image_format, size, draw(st.integers(0, 2**16))
    )


@st.composite
def odd_files(draw) -> tuple[str, bytes]:
    """(suffix, contents) of a file that is not simply an image: text, empty, an image cut
    off or under another suffix, or an image all the same."""
    kind = draw(st.sampled_from(["text", "empty", "cut off", "misnamed", "image"]))
    if kind == "text":
        return draw(st.sampled_from([".txt", ".png", ".jpg", ".csv"])), b"not an image\n"
    if kind == "empty":
        return draw(st.sampled_from([".png", ".jpeg", ".tiff", ""])), b""
    suffix, data = draw(images())
    if kind == "cut off":
        return suffix, data[: draw(st.integers(0, len(data) - 1))]
    if kind == "misnamed":
        return draw(st.sampled_from([".txt", ".png", ".jpeg", ".JPG", ".npy"])), data
    return suffix, data


@st.composite
def image_trees(
    draw, usable: bool = False
) -> tuple[list[tuple[str, ...]], dict[tuple[str, ...], bytes]]:
    """(folders, files) of a data.root, as relative path parts: one to four class folders
    (mostly two or more), under train/ and val/ or not, each with zero to four images and
    zero to three odd files at depth zero to two (some in hidden folders or hidden
    themselves), and maybe files loose beside the class folders.

    `usable`: two or three classes of plain names with two to four images each, so that
    most trees can train (the odd files, names and modes stay as random)."""
    counts = [2, 3] if usable else [2, 3, 2, 4, 1]
    class_names = names
    if usable:
        plain = st.text(NAME_CHARACTERS, min_size=1, max_size=8)
        class_names = plain.filter(lambda name: not is_hidden(name) and name not in SPLITS)
    count = draw(st.sampled_from(counts))
    classes = draw(st.lists(class_names, min_size=count, max_size=count, unique=True))
    tops = [("train",), ("val",)] if draw(st.booleans()) else [()]
    folders, contents = [], {}
    for top in tops:
        for name in classes:
            folders.append((*top, name))
            for number in range(draw(st.sampled_from([3, 2, 4] if usable else IMAGE_COUNTS))):
                suffix, data = draw(images())
                contents[(*top, name, f"{number}{suffix}")] = data
            for _ in range(draw(st.sampled_from([0, 1, 2, 3]))):
                between = tuple(draw(st.lists(names, max_size=2)))
                suffix, data = draw(odd_files())
                contents[(*top, name, *between, draw(names) + suffix)] = data
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):  # loose beside the class folders
        suffix, data = draw(odd_files())
        contents[(*tops[0], draw(names) + suffix)] = data
    return folders, contents


def write_tree(root: Path, folders: list[tuple[str, ...]], contents: dict) -> None:
    """The tree under `root`; a file whose path another entry already took as a folder (or
    the reverse) is left out."""
    for parts in folders:
        with contextlib.suppress(OSError):
            root.joinpath(*parts).mkdir(parents=True, exist_ok=True)
    for parts, data in contents.items():
        path = root.joinpath(*parts)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def assert_one_line(message: str) -> None:
    assert message.strip() and "\n" not in message, message
    assert "Traceback" not in message, message


def serve_every_batch(cfg: DataConfig, root: Path) -> None:
    """Build the data and pull every batch of both loaders, as train.py does, checking what
    comes out: the right shape, finite values, labels of known classes, no hidden file."""
    bundle = build_datasets(cfg, seed=0)
    assert len(bundle.classes) >= 2
    for dataset in (bundle.train, bundle.val):
        for path, _ in getattr(dataset, "samples", []):
            assert not any(is_hidden(part) for part in path.relative_to(root).parts), path
    side, channels = cfg.image_size, bundle.in_channels
    for train, dataset in ((True, bundle.train), (False, bundle.val)):
        for images, labels in build_loader(dataset, cfg, train=train, seed=0):
            assert images.shape[1:] == (channels, side, side)
            assert torch.isfinite(images).all()
            assert 0 <= int(labels.min()) and int(labels.max()) < len(bundle.classes)


data_choices = st.fixed_dictionaries(
    {
        "image_size": st.sampled_from([8, 12, 16]),
        "resize": st.sampled_from([None, 20, 0, 6]),
        "channels": st.sampled_from([None, 1, 3]),
        "val_fraction": st.sampled_from([0.2, 0.5]),
        "cache": st.booleans(),
        "skip_bad": st.booleans(),
        "random_crop": st.booleans(),
        "flip": st.booleans(),
    }
)


@examples(250)
@given(tree=image_trees(), choices=data_choices)
def test_any_image_tree_serves_batches_or_stops_with_one_line(tree, choices):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "data"
        write_tree(root, *tree)
        cfg = DataConfig(
            dataset="imagefolder", root=str(root), batch_size=4, num_workers=0, **choices
        )
        try:
            serve_every_batch(cfg, root)
        except ConfigError as error:
            assert_one_line(str(error))


# The end-to-end runs: tiny images and model, two steps, everything in this process.
TINY_RUN = (
    *SMALL_OVERRIDES,
    "data.dataset=imagefolder",
    "data.image_size=8",
    "data.batch_size=4",
    "train.max_steps=2",
)


def close_log_files() -> None:
    """What the conftest fixture does after a test, after each example: one training run's
    log file handlers must not write into the next example's folder."""
    logger = logging.getLogger("{{ cookiecutter.package_name }}")
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


@examples(25)
@given(tree=image_trees(usable=True), skip_bad=st.booleans())
def test_training_on_any_image_tree_trains_or_ends_with_one_error_line(tree, skip_bad):
    from {{ cookiecutter.package_name }}.cli import DEFAULT_CONFIG
    from {{ cookiecutter.package_name }}.config import load_config
    from {{ cookiecutter.package_name }}.train import run

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "data"
        write_tree(root, *tree)
        overrides = [f"data.root={root}", f"run.dir={Path(folder) / 'run'}"]
        cfg = load_config([DEFAULT_CONFIG], [*TINY_RUN, *overrides, f"data.skip_bad={skip_bad}"])
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                code = run(cfg)
        finally:
            close_log_files()
    lines = stderr.getvalue().strip().splitlines()
    if code != 0:
        assert code == 2, lines
        assert [line for line in lines if line.startswith("error: ")] == lines[-1:], lines
        assert_one_line(lines[-1])
    assert not any("Traceback" in line for line in lines), lines


@pytest.mark.parametrize("mode", sorted(IMAGE_FORMATS))
def test_each_mode_of_the_properties_is_written_as_meant(tmp_path, mode):
    """The strategies make what they say: each mode and format reads back in its mode."""
    for image_format in IMAGE_FORMATS[mode]:
        path = tmp_path / f"image{SUFFIXES[image_format]}"
        path.write_bytes(encoded_image(mode, image_format, (5, 3), seed=1))
        with Image.open(path) as image:
            assert image.size == (5, 3)
            if image_format in ("PNG", "TIFF") and mode != "I;16B":
                assert image.mode == mode
