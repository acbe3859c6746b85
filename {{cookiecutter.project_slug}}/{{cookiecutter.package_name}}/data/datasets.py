"""The training and validation sets named by `data.dataset`, with their normalisation."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError, DataConfig
from .builtin import shapes_bundle
from .bundle import DataBundle
from .cache import cached_bundle, choose_cache
from .folders import ImageFiles, image_folder
from .skip_bad import leave_out_undecodable
from .stats import check_given_stats, normalization_stats
from .torchvision_datasets import TORCHVISION_DATASETS, torchvision_dataset
from .transforms import image_transform, resize_side

DATASET_CHOICES = ("shapes", "imagefolder", *TORCHVISION_DATASETS)


def build_datasets(
    cfg: DataConfig,
    seed: int,
    stats_file: Path | None = None,
    agree: Callable[[Any], Any] = lambda choice: choice,
) -> DataBundle:
    """The training and validation sets named by `cfg.dataset`.

    For image sources with `data.mean`/`data.std` null, the statistics are read from
    `stats_file` when it exists, else computed from the training set (the caller saves
    them there with `save_stats` once the run folder exists). `agree` makes an automatic
    choice the same on every process (rank 0's, under DDP: free memory differs by process).
    """
    if cfg.dataset == "shapes":
        return shapes_bundle(cfg, seed)
    if 0 < resize_side(cfg) < cfg.image_size:
        raise ConfigError(
            f"data.resize={cfg.resize} is smaller than data.image_size={cfg.image_size}: the "
            f"crop would not fit in the resized images; set data.resize to at least "
            f"{cfg.image_size}, or null (image_size * 1.14)"
        )
    if cfg.dataset == "imagefolder":
        train, val, classes, channels = image_folder(cfg)
    elif cfg.dataset in TORCHVISION_DATASETS:
        train, val, classes, channels = torchvision_dataset(cfg)
    else:
        raise ConfigError(
            f"data.dataset={cfg.dataset!r} is not a known dataset; choose one of: "
            f"{', '.join(DATASET_CHOICES)}"
        )
    check_given_stats(cfg, channels)
    use_cache = cfg.cache
    if use_cache is None:
        use_cache = agree(choose_cache(cfg, len(train) + len(val), channels))
    if use_cache:
        return cached_bundle(cfg, train, val, classes, channels, stats_file)
    if cfg.skip_bad and isinstance(train, ImageFiles):  # what the cache's decoding leaves out
        leave_out_undecodable(train, cfg.num_workers, "training")
        leave_out_undecodable(val, cfg.num_workers, "validation")
    mean, std, source = normalization_stats(cfg, train, channels, stats_file)
    train.transform = image_transform(cfg, channels, train=True, mean=mean, std=std)
    val.transform = image_transform(cfg, channels, train=False, mean=mean, std=std)
    return DataBundle(train, val, classes, channels, mean, std, source)
