"""An image file into pixels, as an image viewer shows it: which files are images (by their
suffix), open_image, the one place that decodes one (EXIF orientation applied, 16-bit and
float data scaled to 8 bits), the header check, and how a file's path is shown in messages.

Training, the cache, the statistics, evaluation and prediction all decode through
open_image, so they see the same pixels. PIL is imported only here, and only when needed.
"""

import contextlib
import functools
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

from .bundle import DataError

# Common image suffixes, named in messages; every suffix of a format PIL reads counts
# (image_suffixes).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
# Formats PIL can identify that are never opened as data: EPS (and PS) is a PostScript
# program that PIL hands to Ghostscript to run, WMF/EMF is drawn by Windows' GDI; PIL only
# identifies BUFR, GRIB, HDF5 and MPEG (a data file of that kind would stop a run as an
# unreadable image).
EXCLUDED_FORMATS = frozenset({"EPS", "WMF", "BUFR", "GRIB", "HDF5", "MPEG"})
# PIL modes that hold one channel of intensity.
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# PIL modes that every later step converts to "L" and to "RGB" as they are.
PLAIN_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")
# The value that stands for white in modes wider than 8 bits, the smallest of the list that
# the image's brightest pixel does not exceed: 16-bit data (PNG, TIFF, PGM) in "I;16" or "I",
# floats in [0, 1], [0, 255] or [0, 65535] in "F". PIL's own convert() clips these modes to
# 0..255 instead of scaling them: a 16-bit PNG would train as a black-and-white image.
WHITE_LEVELS = {"I;16": (65535,), "I": (65535, 2**31 - 1), "F": (1.0, 255.0, 65535.0)}
# EXIF orientations that turn the picture a quarter: a viewer shows it with width and
# height exchanged.
QUARTER_TURNS = (5, 6, 7, 8)
# What PIL raises for a file it cannot open or decode.
DECODE_ERRORS = (OSError, SyntaxError, ValueError)
# What reading a damaged EXIF block can raise; the picture is then shown as stored.
EXIF_ERRORS = (*DECODE_ERRORS, TypeError, KeyError, IndexError, struct.error)


@functools.cache
def image_formats() -> tuple[str, ...]:
    """The formats that PIL can open, less EXCLUDED_FORMATS, in the order PIL itself tries
    them (Image.ID: PNG, JPEG and the other common ones first). Image.open tries the formats
    it is given in their order, so in alphabetical order a PNG waited for about twenty other
    formats to refuse it: 1.8x the time of decoding a 32x32 PNG."""
    from PIL import Image

    Image.init()  # registers every plugin PIL has
    return tuple(name for name in Image.ID if name in Image.OPEN and name not in EXCLUDED_FORMATS)


@functools.cache
def image_suffixes() -> frozenset[str]:
    """Every suffix (lower case) registered for one of image_formats: a file with one of them
    is an image file, whatever case its name is in (.JPG, .jfif, .jpe, .pgm, .avif, ...).

    Files are told by their suffix, not by their content: a listing then needs no file to be
    read (the data's fingerprint is made from `stat` alone), and a data file whose first
    bytes happen to match a format without a strong signature (TGA has none) is never taken
    for an image. Files that PIL reads but whose suffix is another are named in a warning
    (folders.py)."""
    from PIL import Image

    formats = image_formats()
    return frozenset(
        suffix for suffix, kind in Image.registered_extensions().items() if kind in formats
    )


def has_image_suffix(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in image_suffixes()


def shown(path: Path | str) -> str:
    """`path` as text for a message or a text file: a name that is not valid UTF-8 (which
    Linux allows; Python holds its bytes as surrogate escapes, which no UTF-8 writer accepts)
    shows those bytes as \\xNN, the way `ls --quoting-style=escape` and Python write them."""
    try:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no byte stands for (from a config, say)
        return str(path).encode("utf-8", "backslashreplace").decode("ascii")


@contextlib.contextmanager
def quiet_pil():
    """PIL's warnings silenced: about damaged metadata (EXIF, TIFF tags) of an image that
    decodes all the same, they would be lines on stderr that ask nothing of the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
        yield


def open_image(path: Path | BinaryIO, shown_as: str | None = None):
    """The decoded image at `path`, in one of PLAIN_MODES, turned as its EXIF orientation
    says (as a viewer shows it), or UnreadableImage naming the file. `path` may also be an
    open binary file (a sample read from a shard), named `shown_as` in messages.

    Images wider than 8 bits per pixel are scaled to 8 bits ("L") from their white level
    (WHITE_LEVELS); other modes (CMYK, YCbCr, LAB, ...) are converted to "RGB".
    """
    from PIL import Image

    try:
        with quiet_pil(), Image.open(path, formats=image_formats()) as image:
            image.load()
            _turn_upright(image)
            if image.mode == "P" and "transparency" in image.info:
                return image.convert("RGBA")  # as PIL asks, rather than warn at each convert
            if image.mode in PLAIN_MODES:
                return image
            if image.mode in GRAYSCALE_MODES:
                return to_8_bits(image)
            return image.convert("RGB")
    except (*DECODE_ERRORS, Image.DecompressionBombError) as error:
        raise _unreadable(shown_as or path, error) from None


def _turn_upright(image) -> None:
    """Apply the image's EXIF orientation to its pixels, in place (PIL's Image.open does not:
    phone photos are mostly stored sideways with such a tag). A damaged EXIF block leaves
    the pixels as stored, as a viewer shows them."""
    from PIL import ImageOps

    with contextlib.suppress(*EXIF_ERRORS):
        ImageOps.exif_transpose(image, in_place=True)


def shown_size(image) -> tuple[int, int]:
    """(width, height) of an opened image as a viewer shows it, from its header: exchanged
    when its EXIF orientation turns it a quarter."""
    from PIL import ExifTags, Image

    try:
        # Image's own getexif reads what the header holds; PNG's would decode the pixels
        # to reach an EXIF chunk stored after them (rare: such a file is measured unturned).
        orientation = Image.Image.getexif(image).get(ExifTags.Base.Orientation)
    except EXIF_ERRORS:
        orientation = None
    width, height = image.size
    return (height, width) if orientation in QUARTER_TURNS else (width, height)


def read_header(path: Path) -> tuple[tuple[int, int], str, str | None]:
    """(size as shown, PIL mode, PIL format) of the image at `path` from its header, its checksums
    verified where the format has them (cheap: the pixels are not decoded), or
    UnreadableImage."""
    from PIL import Image

    try:
        with quiet_pil(), Image.open(path, formats=image_formats()) as image:
            size, mode, image_format = shown_size(image), image.mode, image.format
            image.verify()
    except (*DECODE_ERRORS, Image.DecompressionBombError) as error:
        raise _unreadable(path, error) from None
    return size, mode, image_format


def reads_as_image(path: Path) -> bool:
    """Whether PIL identifies the file at `path` as an image of image_formats by its header
    (a few bytes read, nothing decoded)."""
    from PIL import Image

    try:
        with quiet_pil(), Image.open(path, formats=image_formats()):
            return True
    except Image.DecompressionBombError:
        return True  # an image, too large to be used: named when checked
    except DECODE_ERRORS:
        return False


def to_8_bits(image):
    """A one-channel image of 16 or 32 bits per pixel ("I;16", "I", "F") as "L", scaled so
    that its white level (WHITE_LEVELS) becomes 255, rounded; NaN is black, +inf white."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(pixels)
    peak = pixels.max(initial=0.0, where=finite)
    levels = WHITE_LEVELS["I;16" if image.mode.startswith("I;16") else image.mode]
    white = next((level for level in levels if peak <= level), peak)
    pixels = np.where(finite, pixels, np.where(pixels > 0, white, 0.0))
    scaled = np.clip(np.rint(pixels * (255 / white)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


class UnreadableImage(DataError):
    """An image file that PIL cannot open or decode. `skip_warning` is what data.skip_bad
    says instead: the same problem, without the advice to set data.skip_bad. (One argument
    is enough to make one: a DataLoader worker's error is re-made from its message.)"""

    def __init__(self, message: str, skip_warning: str = "") -> None:
        super().__init__(message)
        self.skip_warning = skip_warning or f"skipping: {str(self).split('; ')[0]}"

    @property
    def problem(self) -> str:
        """The file and what is wrong with it, without advice."""
        return self.skip_warning.removeprefix("skipping ")


def _unreadable(path: Path, error: Exception) -> UnreadableImage:
    reason = _reason(error, path)
    return UnreadableImage(
        f"{shown(path)} is not a readable image ({reason}); replace or delete it, "
        "or set data.skip_bad=true to skip unreadable images with a warning",
        f"skipping {shown(path)}: not a readable image ({reason})",
    )


def _reason(error: Exception, path: Path) -> str:
    """The first line of PIL's message, without the path that the error names already."""
    text = str(error).strip().replace(f" {str(path)!r}", "").replace(str(path), "the file")
    return shown(text.splitlines()[0]) if text else type(error).__name__
