"""Normalisation statistics: per-channel mean and std from the config, or estimated from the
training images as evaluation sees them.

A resumed run normalises with the statistics its checkpoint holds (see resume.build_data):
the run folder's normalization.json is a record of them for people and other tools, read
back only to say when it differs, or where a checkpoint holds none.
"""

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..config import ConfigError, DataConfig
from ..files import atomic_write_text, read_small_json
from .bundle import DataBundle
from .transforms import centre_window, image_transform

# The project's logger (the package's, not this module's).
logger = logging.getLogger(__name__.split(".")[0])

# Mean and std are estimated from this many training images, spread over the whole set.
STATS_IMAGES = 500
STATS_FILE = "normalization.json"
# A statistics record is a few hundred bytes: anything far larger is not one.
MAX_RECORD_BYTES = 64 * 1024


def normalization_stats(
    cfg: DataConfig,
    train: Dataset | torch.Tensor | Callable[[], torch.Tensor],
    channels: int,
    stats_file: Path | None,
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, where they came from): the config, a record ("cached"), or computed.

    `train` is the training set, or with data.cache its decoded images (uint8 [N, C, S, S]),
    or a function that reads them.
    A given data.mean was checked against `channels` by build_datasets (check_given_stats).
    `stats_file`: a record (normalization.json) to fall back on, given only for a resumed
    run whose checkpoint holds no statistics; one that cannot be used is said in one
    warning, and the statistics are computed instead.
    """
    if cfg.mean is not None:
        return tuple(cfg.mean), tuple(cfg.std), "config"
    if stats_file is not None:
        recorded, problem = read_stats_record(stats_file, channels)
        if recorded is not None:
            return *recorded, "cached"
        logger.warning(
            "%s cannot be used (%s): the statistics are computed from the training images",
            stats_file,
            problem,
        )
    started = time.perf_counter()
    if isinstance(train, torch.Tensor):
        mean, std, count = cached_stats(train, cfg.image_size, channels)
    elif callable(train):  # decoded images, read only now (decoded shards: shards.py)
        mean, std, count = cached_stats(train(), cfg.image_size, channels)
    else:
        plain = image_transform(cfg, channels, train=False)  # as evaluation sees them, unnormalised
        mean, std, count = compute_stats(train, plain, channels)
    logger.info(
        "normalisation: mean %s, std %s, computed from %d training images in %.1f s",
        [round(value, 4) for value in mean],
        [round(value, 4) for value in std],
        count,
        time.perf_counter() - started,
    )
    return mean, std, "computed"


def check_given_stats(cfg: DataConfig, channels: int) -> None:
    """data.mean and data.std, where given, hold one number per channel of the images.
    Checked as soon as the channels are known, before any image is decoded."""
    if cfg.mean is not None and len(cfg.mean) != channels:
        raise ConfigError(
            f"data.mean={cfg.mean} has {len(cfg.mean)} numbers but the images have "
            f"{channels} channel(s); give one number per channel, or set data.channels"
        )


def compute_stats(train: Dataset, transform, channels: int):
    """Per-channel mean and std of up to STATS_IMAGES training images, spread evenly over
    the set, each prepared by `transform` (to a tensor in [0, 1]). Returns (mean, std, count)."""
    indices = _stats_indices(len(train))
    saved_transform = train.transform
    train.transform = transform
    try:
        mean, std = _mean_std((train[index][0] for index in indices), channels)
    finally:
        train.transform = saved_transform
    return mean, std, len(indices)


def cached_stats(images: torch.Tensor, crop: int, channels: int):
    """compute_stats for decoded images (uint8 [N, C, S, S]): the same images, each centre
    cropped to `crop` and scaled to [0, 1] as ToTensor does, so the same statistics."""
    indices = _stats_indices(len(images))
    window = centre_window(images.shape[-1], crop)
    pixels = (images[index, :, window, window].float().div(255) for index in indices)
    mean, std = _mean_std(pixels, channels)
    return mean, std, len(indices)


def _stats_indices(length: int) -> list[int]:
    """Up to STATS_IMAGES indices spread evenly over a set of `length`."""
    count = min(length, STATS_IMAGES)
    return [i * length // count for i in range(count)]


def _mean_std(images, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of float images [C, H, W] in [0, 1], each weighted alike."""
    sums = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for image in images:
        pixels = image.double().flatten(1)
        sums += pixels.mean(dim=1)
        squares += pixels.square().mean(dim=1)
        count += 1
    mean = sums / count
    # A floor keeps a blank channel (e.g. an all-black test set) from dividing by zero.
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


def checked_stats(value, channels: int | None = None) -> tuple[tuple, tuple]:
    """(mean, std) of a statistics record or checkpoint entry ({"mean": [...], "std": [...]});
    ValueError saying what is wrong where it is not one finite mean and one positive std per
    channel (of `channels`, where known)."""
    if not isinstance(value, dict) or not {"mean", "std"} <= value.keys():
        raise ValueError("it holds no mean and std")
    mean, std = value["mean"], value["std"]
    numbers = (int, float)
    for name, values in (("mean", mean), ("std", std)):
        if not isinstance(values, list) or not values or len(values) > 4:
            raise ValueError(f"its {name} is not a list of one number per channel")
        if not all(isinstance(x, numbers) and not isinstance(x, bool) for x in values):
            raise ValueError(f"its {name} holds something other than numbers")
        if not all(math.isfinite(x) for x in values):
            raise ValueError(f"its {name} holds a number that is not finite")
    if len(mean) != len(std):
        raise ValueError(f"it has {len(mean)} means but {len(std)} stds")
    if channels is not None and len(mean) != channels:
        raise ValueError(f"it has statistics of {len(mean)} channels, the images {channels}")
    if not all(x > 0 for x in std):
        raise ValueError("a std is not positive")
    return tuple(float(x) for x in mean), tuple(float(x) for x in std)


def read_stats_record(path: Path, channels: int | None = None):
    """((mean, std), None) from a normalization.json, or (None, what is wrong with it)."""
    try:
        record = read_small_json(path, MAX_RECORD_BYTES, "statistics")
        return checked_stats(record, channels), None
    except FileNotFoundError:
        return None, "there is no such file"
    except OSError as error:  # not a regular file (a pipe, a device), or unreadable
        return None, error.strerror or str(error)
    except ValueError as error:  # too large, not UTF-8 JSON, or not statistics
        return None, f"not a statistics record: {' '.join(str(error).split())[:200]}"


def same_stats(first: tuple[tuple, tuple], second: tuple[tuple, tuple]) -> bool:
    """Whether two (mean, std) pairs are the same statistics (as written and read back)."""
    pairs = zip([*first[0], *first[1]], [*second[0], *second[1]], strict=False)
    return len(first[0]) == len(second[0]) and all(
        math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in pairs
    )


def save_stats(path: Path, data: DataBundle) -> None:
    """Record the statistics the run normalises with in its folder (normalization.json)."""
    atomic_write_text(path, json.dumps(data.normalization(), indent=2) + "\n")
