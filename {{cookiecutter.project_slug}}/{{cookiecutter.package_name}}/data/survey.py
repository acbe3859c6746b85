"""What the training images are like, and the input settings left null that follow from it.

A survey is made while the data is built, from what is read anyway (image headers, for
folders of files): each training image's shorter side as a viewer shows it, how many are
stored in a photograph's format (JPEG and its relatives), and the channels. From it:

- data.image_size, when null: the side of the square the model sees. build_datasets takes
  a chooser from the caller (training passes one that also times the model, see
  input_size.py); without one, `size_from_data` alone decides;
- data.flip, when null: random horizontal flips for photos only (`choose_flip`).

The checks that need the final size (images smaller than the crop) run after the choice.
"""

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DataConfig
from ..log import counted, log_choice
from .bundle import DataError
from .images import shown

logger = logging.getLogger(__name__.split(".")[0])

# Square sides the automatic choice picks from: multiples of 16 from 32 to 128, then larger
# steps; 224, 256, 288, 320 and 384 are the sides pretrained models are published at.
SIDES = (32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512)
SMALLEST_SIDE = SIDES[0]  # what the project trained at before the size was automatic
SHAPES_SIDE = 32  # the built-in shapes are drawn at this side
# Formats cameras and phones store photographs in.
PHOTO_FORMATS = ("JPEG", "MPO", "WEBP", "HEIF", "HEIC", "AVIF")
PHOTO_SIDE = 64  # a photograph smaller than this is an icon, a glyph or a thumbnail


@dataclass
class ImageSurvey:
    """The training images' sizes and formats (see the module docstring)."""

    channels: int
    shorter_sides: list[int] = field(default_factory=list)
    photo_files: int = 0
    smallest: tuple[Path | None, tuple[int, int]] = (None, (0, 0))  # (path, size) of one
    source: str = "the training images"

    def add(self, path: Path | None, size: tuple[int, int], image_format: str | None) -> None:
        side = min(size)
        if not self.shorter_sides or side < min(self.smallest[1]):
            self.smallest = (path, size)
        self.shorter_sides.append(side)
        self.photo_files += image_format in PHOTO_FORMATS

    @property
    def median_side(self) -> int:
        return int(statistics.median(self.shorter_sides)) if self.shorter_sides else 0

    def looks_like_photos(self) -> bool:
        """Colour images of photo size, most of them stored as photographs are."""
        count = len(self.shorter_sides)
        return (
            self.channels == 3
            and self.median_side >= PHOTO_SIDE
            and 2 * self.photo_files > count > 0
        )

    def describe(self) -> str:
        return f"median shorter side {self.median_side} px of {self.source}"


# (survey, classes, training images) -> (side, reason)
SizeChooser = Callable[[ImageSurvey, int, int], tuple[int, str]]


def candidate_sides(survey: ImageSurvey, ceiling: int | None = None) -> list[int]:
    """The sides the automatic choice may take, smallest first: those of SIDES up to the
    images' median shorter side (a model sees what the images hold without scaling most of
    them up), and up to `ceiling`, a pretrained model's own side, which is itself a
    candidate (299 for inception_v3) where the images are that large; SMALLEST_SIDE alone
    for small images, the side the project's recipe was tuned at."""
    top = survey.median_side if ceiling is None else min(ceiling, survey.median_side)
    sides = [side for side in SIDES if side <= top]
    if ceiling is not None and ceiling <= survey.median_side and ceiling not in sides:
        sides.append(ceiling)
    return sorted(sides) or [SMALLEST_SIDE]


def size_from_data(survey: ImageSurvey, ceiling: int | None = None) -> tuple[int, str]:
    """The largest of candidate_sides, and the reason in words."""
    side = candidate_sides(survey, ceiling)[-1]
    reason = survey.describe()
    if ceiling is not None:
        reason += f", the pretrained weights' own side {ceiling} px"
    return side, reason


def resolve_input_settings(
    cfg: DataConfig,
    survey: ImageSurvey,
    classes: int,
    train_images: int,
    choose_size: SizeChooser | None,
    weights=None,
) -> dict:
    """The values of the input settings left null, each logged with its reason: {} when
    all are set. `weights`: the pretrained weights' own preprocessing (pretrained.py's
    Preprocessing), whose statistics and resampling then serve where none are given."""
    chosen = {}
    if cfg.image_size is None:
        if choose_size is not None:
            side, reason = choose_size(survey, classes, train_images)
        else:
            side, reason = size_from_data(survey, weights.crop_size if weights else None)
        side, reason = _within_resize(cfg, survey, side, reason)
        log_choice("data.image_size", side, reason)
        chosen["image_size"] = side
    if cfg.flip is None:
        flip, reason = choose_flip(survey)
        log_choice("data.flip", str(flip).lower(), reason)
        chosen["flip"] = flip
    if weights is not None:
        chosen.update(weights_settings(cfg, weights, survey.channels))
    return chosen


def _within_resize(cfg: DataConfig, survey: ImageSurvey, side: int, reason: str):
    """The side no larger than the square the images are resized to: data.resize, or with
    data.resize=0 (no resize) the smallest image."""
    if cfg.resize is None:
        return side, reason
    limit = cfg.resize or min(survey.smallest[1])
    if side <= limit:
        return side, reason
    side = max([s for s in SIDES if s <= limit] or [max(limit, 8)])
    what = f"data.resize={cfg.resize}" if cfg.resize else "the smallest image (data.resize=0)"
    return side, f"{reason}; no larger than {what}"


def weights_settings(cfg: DataConfig, weights, channels: int) -> dict:
    """data.mean/std and data.interpolation, where null, as the pretrained weights' images
    were prepared: the features they learnt expect inputs normalised and resampled so. For
    grayscale images (the first convolution's filters summed over RGB), one mean and std:
    the averages of the three."""
    chosen = {}
    reason = "the pretrained weights' own"
    if cfg.mean is None:
        mean, std = list(weights.mean), list(weights.std)
        if channels == 1:
            mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
            reason += ", averaged over RGB for grayscale images"
        chosen["mean"], chosen["std"] = mean, std
        log_choice("data.mean", [round(value, 4) for value in mean], reason)
        log_choice("data.std", [round(value, 4) for value in std], reason)
    if cfg.interpolation is None:
        chosen["interpolation"] = weights.interpolation
        log_choice("data.interpolation", weights.interpolation, "the pretrained weights' own")
    return chosen


def choose_flip(survey: ImageSurvey) -> tuple[bool, str]:
    """Flips for photographs only: a mirrored street, animal or product is the same class,
    but a mirrored digit, letter, sign or drawing may be another (b and d, 2 and S), and
    such data comes as grayscale, small or drawn images, seldom as colour JPEGs."""
    if survey.looks_like_photos():
        return True, (
            f"colour photographs ({survey.photo_files} of {len(survey.shorter_sides)} stored as "
            f"JPEG or alike, {survey.describe()}): a mirrored photo shows the same thing"
        )
    if survey.channels != 3:
        why = "grayscale images"
    elif survey.median_side < PHOTO_SIDE:
        why = f"small images ({survey.median_side} px)"
    else:
        why = "images not stored as photographs (PNG, GIF, ...)"
    return False, f"{why}: a mirrored digit, letter or drawing may be another class"


def check_sizes(cfg: DataConfig, survey: ImageSurvey) -> None:
    """The checks that need data.image_size: with data.resize=0 every image must hold the
    crop; images less than half the crop's side are named once (they are scaled up a lot)."""
    path, size = survey.smallest
    if not survey.shorter_sides:
        return
    if cfg.resize == 0 and min(size) < cfg.image_size:
        raise DataError(
            f"{shown(path)} is {size[0]}x{size[1]} pixels, smaller than the crop of "
            f"data.image_size={cfg.image_size} with data.resize=0; use data.resize=null "
            "to scale images first, or a smaller data.image_size"
        )
    tiny = sum(2 * side < cfg.image_size for side in survey.shorter_sides)
    if tiny and path is not None:
        logger.warning(
            "%s smaller than half of data.image_size=%d (the smallest: %s, %dx%d) scaled up "
            "a lot; a smaller data.image_size may suit them better",
            counted(tiny, "image is", "images are"),
            cfg.image_size,
            shown(path),
            *size,
        )
