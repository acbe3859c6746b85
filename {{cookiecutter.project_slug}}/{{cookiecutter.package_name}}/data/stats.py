"""Normalisation statistics: per-channel mean and std from the config, from the run folder
(a resumed run reads back what its first start computed), or estimated from the training
images as evaluation sees them."""

import json
import logging
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..config import ConfigError, DataConfig
from ..files import atomic_write_text
from .bundle import DataBundle
from .transforms import centre_window, image_transform

# The project's logger (the package's, not this module's).
logger = logging.getLogger(__name__.split(".")[0])

# Mean and std are estimated from this many training images, spread over the whole set.
STATS_IMAGES = 500
STATS_FILE = "normalization.json"


def normalization_stats(
    cfg: DataConfig, train: Dataset | torch.Tensor, channels: int, stats_file: Path | None
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, where they came from): the config, the run folder's cache, or computed.

    `train` is the training set, or with data.cache its decoded images (uint8 [N, C, S, S]).
    A given data.mean was checked against `channels` by build_datasets (check_given_stats).
    """
    if cfg.mean is not None:
        return tuple(cfg.mean), tuple(cfg.std), "config"
    if stats_file is not None and stats_file.is_file():
        cached = json.loads(stats_file.read_text(encoding="utf-8"))
        if len(cached["mean"]) == channels:
            return tuple(cached["mean"]), tuple(cached["std"]), "cached"
    started = time.perf_counter()
    if isinstance(train, torch.Tensor):
        mean, std, count = cached_stats(train, cfg.image_size, channels)
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


def save_stats(path: Path, data: DataBundle) -> None:
    """Cache computed statistics in the run folder: a resumed run reads them back."""
    atomic_write_text(path, json.dumps(data.normalization(), indent=2) + "\n")
