"""What a model file declares about itself, checked before anything is built from it.

A checkpoint, an exported weights file (its `<file>.json` card or safetensors header) or a
program comes with the config, class names, normalisation statistics and input channels
it was made with. They may come from anyone: the config schema's own rules
(`config.validate`) check the settings, and the bounds here add what the schema leaves open
because a user may choose it for their own training, but a file may not ask of this
machine: images or a resize side beyond MAX_IMAGE_SIZE, more than MAX_CLASSES classes, batches
or built-in validation images beyond a few GiB, more loader processes than MAX_WORKERS
(`check_data_settings`: every data setting that scales memory or processes, checked in one
place before any data is built; the built-in training set is never built to read a file).
Nor may a file start a network download: its data.download is set aside
(`without_download`), and only the user's own data.download=true downloads anything.
The model itself is sized against its weights on the meta device (inference.py), so a
width or a class list that does not fit the weights allocates nothing.
"""

import functools
import logging
import math
from pathlib import Path

import torch

from .checkpoint import CheckpointError, first_line
from .config import Config, ConfigError, validate

logger = logging.getLogger(__name__.rsplit(".", 1)[0])

# The largest image side a file may ask for: four times the 1024 px of the largest common
# classification inputs; one such RGB image is 200 MB as float32.
MAX_IMAGE_SIZE = 4096
# More classes than any public classification data set has (ImageNet-21k: 21,841).
MAX_CLASSES = 100_000
CHANNELS = (1, 3)
# The most memory one batch of float32 input images may take (1 GiB: 2,700 RGB images of
# 224 px), and the built-in validation images (2 GiB: 50,000 of 32 px); generating one
# built-in image of side S takes about BUILTIN_BYTES_PER_PIXEL * S * S bytes at its peak
# (float32 colours and noise, the uint8 image, its normalised copy).
MAX_BATCH_BYTES = 2**30
MAX_BUILTIN_BYTES = 2**31
BUILTIN_BYTES_PER_PIXEL = 40
# DataLoader worker processes a file may start: more than any machine uses to read images.
MAX_WORKERS = 64


def checked_classes(classes, path: Path) -> list[str]:
    """The class names a file declares: a list of distinct names, not too many."""
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise CheckpointError(f"{path}: its class names are not a list of names")
    if not 1 <= len(classes) <= MAX_CLASSES or len(set(classes)) != len(classes):
        raise CheckpointError(
            f"{path} declares {len(classes)} class names ({len(set(classes))} distinct); "
            f"a model file holds 1 to {MAX_CLASSES} distinct ones"
        )
    return classes


def check_data_settings(cfg: Config, path: Path) -> None:
    """The data settings of a file's config (with the user's overrides) ask for no more
    memory or processes than the bounds above, before any data is built from them."""
    data = cfg.data
    if data.image_size is None:  # a run records the side it chose: a file without one is not
        raise CheckpointError(f"{path} declares no data.image_size; it was not written by a run")
    for key, side in (("data.image_size", data.image_size), ("data.resize", data.resize)):
        if side is not None and side > MAX_IMAGE_SIZE:
            _too_large(path, key, side, f"beyond {MAX_IMAGE_SIZE} px")
    size, pixels = data.image_size, data.image_size**2
    if data.batch_size is not None and data.batch_size * 3 * 4 * pixels > MAX_BATCH_BYTES:
        limit = f"beyond {MAX_BATCH_BYTES // (3 * 4 * pixels)} images of {size} px a batch"
        _too_large(path, "data.batch_size", data.batch_size, limit)
    builtin = data.val_size * BUILTIN_BYTES_PER_PIXEL * pixels
    if data.dataset == "shapes" and builtin > MAX_BUILTIN_BYTES:
        limit = MAX_BUILTIN_BYTES // (BUILTIN_BYTES_PER_PIXEL * pixels)
        _too_large(path, "data.val_size", data.val_size, f"beyond {limit} images of {size} px")
    if data.num_workers is not None and data.num_workers > MAX_WORKERS:
        _too_large(path, "data.num_workers", data.num_workers, f"beyond {MAX_WORKERS} processes")


def without_download(config: dict) -> tuple[dict, bool]:
    """(the config of a file with data.download off, whether the file asked for a download):
    reading a file must not make a torchvision dataset download into data.root, a folder the
    file names too. The user's data.download=true, applied over this, still downloads."""
    data = config.get("data")
    if not isinstance(data, dict) or data.get("download") in (None, False):
        return config, False
    return {**config, "data": {**data, "download": False}}, True


@functools.cache  # once a file: export.py reads the same file up to five times
def warn_download_set_aside(path: Path) -> None:
    logger.warning(
        "%s asks for data.download=true, which a model file may not: nothing is downloaded "
        "(give data.download=true yourself to let torchvision download the data)",
        path,
    )


def _too_large(path: Path, key: str, value: int, bound: str) -> None:
    raise CheckpointError(
        f"{path} asks for {key}={value} ({bound}): not a model file of "
        f"this project; give another, or override it with {key}=N if you trust the file"
    )


def checked_channels(value, path: Path) -> int:
    """The input channels a program's card declares: 1 or 3."""
    if type(value) is not int or value not in CHANNELS:
        raise CheckpointError(
            f"{path}: its card declares {value!r} input channels, not 1 or 3; export it again"
        )
    return value


def apply_statistics(cfg: Config, stats, in_channels: int, path: Path) -> None:
    """Set the file's normalisation statistics into `cfg` where the config left them to the
    data, then check those that will be used: finite, std > 0, one per input channel."""
    if cfg.data.mean is None and stats:
        if not isinstance(stats, dict):
            raise CheckpointError(f"{path}: its normalisation statistics are not a mapping")
        cfg.data.mean, cfg.data.std = stats.get("mean"), stats.get("std")
    if cfg.data.mean is None:
        return
    for name, values in (("mean", cfg.data.mean), ("std", cfg.data.std)):
        if not _finite_numbers(values):
            raise CheckpointError(
                f"{path}: its normalisation {name} {_shown(values)} is not a list of finite "
                "numbers; give the checkpoint it came from, or set data.mean and data.std"
            )
    cfg.data.mean, cfg.data.std = list(cfg.data.mean), list(cfg.data.std)
    try:
        validate(cfg)  # the schema's own rules: one number per channel, std > 0
    except ConfigError as error:
        raise CheckpointError(f"{path}: {first_line(error)}") from None
    if len(cfg.data.mean) != in_channels:
        raise CheckpointError(
            f"{path}: its normalisation has {len(cfg.data.mean)} numbers per image but the "
            f"model takes {in_channels} channels; set data.mean and data.std"
        )


def _finite_numbers(values) -> bool:
    return isinstance(values, (list, tuple)) and all(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        for value in values
    )


def _shown(values) -> str:
    text = repr(values)
    return text if len(text) <= 60 else text[:57] + "..."


@torch.no_grad()
def check_program_fits(model, in_channels: int, image_size: int, classes: int, path: Path):
    """A program (torch.export or ONNX) takes one image of the declared channels and size
    and gives one score per class: tried on one blank image, before any real one."""
    blank = torch.zeros(1, in_channels, image_size, image_size)
    try:
        logits = model(blank)
    except Exception as error:  # a program's own errors (torch's guards, onnxruntime's)
        raise CheckpointError(
            f"{path} does not take {in_channels}x{image_size}x{image_size} images, as its "
            f"card says ({first_line(error)}); export it again"
        ) from None
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (1, classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise CheckpointError(
            f"{path} gives outputs of shape {shape} for one image, not one score for each "
            f"of the {classes} classes of its card; export it again"
        )
