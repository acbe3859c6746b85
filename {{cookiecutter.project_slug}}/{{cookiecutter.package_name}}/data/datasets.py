"""The training and validation sets named by `data.dataset`, with their normalisation."""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError, DataConfig
from ..log import log_choice
from ..shapes import SHAPE_CLASSES
from .builtin import shapes_bundle
from .bundle import DataBundle
from .cache import cached_bundle, choose_cache
from .decoded_shards import decoded_settings
from .disk_cache import disk_cached_bundle
from .folders import ImageFiles, image_folder
from .shards import shard_sets, streamed_bundle
from .skip_bad import leave_out_undecodable
from .stats import check_given_stats, normalization_stats
from .survey import SHAPES_SIDE, ImageSurvey, SizeChooser, check_sizes, resolve_input_settings
from .torchvision_datasets import TORCHVISION_DATASETS, torchvision_dataset
from .transforms import image_transform, resize_side

DATASET_CHOICES = ("shapes", "imagefolder", "shards", *TORCHVISION_DATASETS)


def build_datasets(
    cfg: DataConfig,
    seed: int,
    stats_file: Path | None = None,
    agree: Callable[[Any], Any] = lambda choice: choice,
    choose_size: SizeChooser | None = None,
    weights=None,
) -> DataBundle:
    """The training and validation sets named by `cfg.dataset`.

    For image sources with `data.mean`/`data.std` null, the statistics are read from
    `stats_file` when it exists, else computed from the training set (the caller saves
    them there with `save_stats` once the run folder exists). `agree` makes an automatic
    choice the same on every process (rank 0's, under DDP: free memory differs by process).
    data.image_size and data.flip left null are chosen from the images (survey.py; the
    size by `choose_size` where given), and with `weights` (the pretrained weights' own
    preprocessing, see pretrained.py) data.mean/std and data.interpolation; they are
    returned in the bundle's `chosen`.
    """
    if cfg.dataset == "shapes":
        return _shapes(cfg, seed, agree, weights)
    if cfg.dataset == "imagefolder":
        train, val, classes, channels = image_folder(cfg)
        survey = train.survey
    elif cfg.dataset == "shards":
        train, val, classes, channels = shard_sets(cfg)
        survey = train.survey
    elif cfg.dataset in TORCHVISION_DATASETS:
        train, val, classes, channels = torchvision_dataset(cfg)
        survey = ImageSurvey(channels, source=f"the {cfg.dataset} images")
        survey.add(None, train[0][0].size, None)  # one size for all of them
    else:
        raise ConfigError(
            f"data.dataset={cfg.dataset!r} is not a known dataset; choose one of: "
            f"{', '.join(DATASET_CHOICES)}"
        )
    fixed = decoded_settings(cfg, getattr(train, "decoded", None), weights)  # decoded shards'
    cfg = dataclasses.replace(cfg, **fixed)
    chosen = agree(
        fixed | resolve_input_settings(cfg, survey, len(classes), len(train), choose_size, weights)
    )
    cfg = dataclasses.replace(cfg, **chosen)
    _check_resize(cfg)
    check_sizes(cfg, survey)
    check_given_stats(cfg, channels)
    if cfg.dataset == "shards":  # streamed from the shards, never cached (see shards.py)
        data = streamed_bundle(cfg, train, val, classes, channels, stats_file)
        data.chosen = chosen
        return data
    use_cache = cfg.cache
    if use_cache is None:
        use_cache = agree(choose_cache(cfg, len(train) + len(val), channels))
    if use_cache == "disk":
        data = disk_cached_bundle(cfg, train, val, classes, channels, stats_file)
    elif use_cache:
        data = cached_bundle(cfg, train, val, classes, channels, stats_file)
    else:
        data = _files_bundle(cfg, train, val, classes, channels, stats_file)
    data.chosen = chosen
    return data


def _files_bundle(cfg: DataConfig, train, val, classes, channels, stats_file) -> DataBundle:
    """The sets decoded from their files each time an image is drawn."""
    if cfg.skip_bad and isinstance(train, ImageFiles):  # what the cache's decoding leaves out
        leave_out_undecodable(train, cfg.num_workers, "training")
        leave_out_undecodable(val, cfg.num_workers, "validation")
    mean, std, source = normalization_stats(cfg, train, channels, stats_file)
    train.transform = image_transform(cfg, channels, train=True, mean=mean, std=std)
    val.transform = image_transform(cfg, channels, train=False, mean=mean, std=std)
    return DataBundle(train, val, classes, channels, mean, std, source)


def _shapes(cfg: DataConfig, seed: int, agree, weights) -> DataBundle:
    """The built-in shapes, drawn at data.image_size (null: SHAPES_SIDE, the side they were
    designed at, whatever model trains on them: any larger side only costs time, and
    memory for the whole set)."""
    survey = ImageSurvey(3, source="the built-in shapes")
    survey.add(None, (SHAPES_SIDE, SHAPES_SIDE), "PNG")
    side = cfg.image_size or SHAPES_SIDE
    fixed = dataclasses.replace(cfg, image_size=side, flip=False)  # never flipped
    chosen = resolve_input_settings(
        fixed, survey, len(SHAPE_CLASSES), cfg.train_size, None, weights
    )
    if cfg.image_size is None:
        chosen["image_size"] = side
        log_choice("data.image_size", side, f"the built-in shapes are drawn at {side} px")
    if cfg.flip is None:
        chosen["flip"] = False
    chosen = agree(chosen)
    data = shapes_bundle(dataclasses.replace(cfg, **chosen), seed)
    data.chosen = chosen
    return data


def _check_resize(cfg: DataConfig) -> None:
    if 0 < resize_side(cfg) < cfg.image_size:
        raise ConfigError(
            f"data.resize={cfg.resize} is smaller than data.image_size={cfg.image_size}: the "
            f"crop would not fit in the resized images; set data.resize to at least "
            f"{cfg.image_size}, or null (image_size * 1.14)"
        )
