"""Decoded shards (prepare_shards.py --decoded N): each image stored as the decoded cache
stores it, a square of uint8 pixels (KEY.npy, [C, S, S]) from which the crops for
data.image_size=N are taken. Training decodes nothing: a batch is a gather of crops, a flip
and a normalisation, a few tensor operations for the whole batch (SquareCrops).

The images were resized when the shards were written, so the settings that did it
(data.image_size, data.resize, data.interpolation, data.channels) are the shards' own:
decoded_settings takes them where they are null and refuses, in one line, any other.
"""

import io
import logging

import torch

from ..config import ConfigError, DataConfig
from ..log import log_choice
from .bundle import DataError
from .cache import normalized, window_crops
from .samplers import seeded_cpu_random
from .shard_index import RERUN, shown_root
from .transforms import centre_window

# The project's logger (the package's, not this module's).
logger = logging.getLogger(__name__.split(".")[0])


# The prepare_shards.py option that writes each setting the shards fix.
OPTIONS = {"image_size": "--decoded", "resize": "--resize", "interpolation": "--interpolation"}


def decoded_settings(cfg: DataConfig, decoded: dict | None, weights=None) -> dict:
    """The data settings that decoded shards (their index's "decoded" record) fix, as
    {name: value} for those left null (each logged as an automatic choice); a ConfigError
    for one given otherwise. {} for shards of image files (`decoded` None). `weights`: the
    pretrained weights' preprocessing, whose resampling is said where the shards' differs."""
    if decoded is None:
        return {}
    where = f"the decoded shards at {shown_root(cfg.root)}"
    fixed = {}
    for name, option in OPTIONS.items():
        given, theirs = getattr(cfg, name), decoded[name]
        if given is None:
            if theirs is not None:
                fixed[name] = theirs
                log_choice(f"data.{name}", theirs, f"{where} were decoded with it")
            continue
        if name == "resize" and theirs is None:  # the default: image_size * 1.14
            theirs = decoded["side"]
        if given != theirs:
            raise ConfigError(
                f"data.{name}={given}: {where} were decoded with data.{name}={theirs}; set "
                f"data.{name}=null to train on them, or write them again with {option} "
                f"{given} (prepare_shards.py), or write shards of the image files (without "
                "--decoded)"
            )
    if weights is not None and cfg.interpolation is None:
        if weights.interpolation != decoded["interpolation"]:
            logger.warning(
                "the pretrained weights were trained on images resized with %s, %s with %s; "
                "write them again with --interpolation %s to match",
                weights.interpolation,
                where,
                decoded["interpolation"],
                weights.interpolation,
            )
    return fixed


def npy_header(shape: tuple[int, int, int]) -> bytes:
    """The header numpy.save writes before the pixels of a uint8 array of `shape`."""
    import numpy

    buffer = io.BytesIO()
    numpy.lib.format.write_array_header_1_0(
        buffer, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def npy_size(shape: tuple[int, int, int]) -> int:
    """The bytes of the .npy file of a uint8 array of `shape`: its header and the pixels."""
    return len(npy_header(shape)) + shape[0] * shape[1] * shape[2]


class SquareReader:
    """A decoded shard's sample -> its uint8 [C, S, S] tensor (a view of the bytes read).

    Only the .npy files prepare_shards.py writes are read: the expected header, then
    exactly C * S * S bytes. Comparing the header beats parsing it (numpy.load evaluates it
    as a Python literal), and nothing else is ever interpreted.
    """

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape = shape
        self.header = npy_header(shape)
        self.size = npy_size(shape)

    def __call__(self, data: bytes, where: str) -> torch.Tensor:
        if len(data) != self.size or not data.startswith(self.header):
            raise DataError(
                f"the sample {where} is not the uint8 {list(self.shape)} array its index "
                f"says; the shards are damaged or were replaced; {RERUN}"
            )
        pixels = torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=len(self.header))
        return pixels.view(self.shape)


class SquareCrops:
    """A batch of stored squares (uint8 [B, C, S, S]) -> normalised float32 [B, C, N, N]:
    each cropped to N (`crop`) where RandomCrop would crop it under the sample's seed (or
    at the centre: evaluation, a sample without a seed, data.random_crop=false), flipped
    where RandomHorizontalFlip would flip it (with data.flip), and normalised as ToTensor
    and Normalize compute it: a square image gives the pixels image_transform gives its
    file, bit for bit. The draws are per sample; the pixel work is one gather for the batch.
    """

    def __init__(self, crop: int, random_crop: bool, flip: bool, mean, std) -> None:
        self.crop, self.random_crop, self.flip = crop, random_crop, flip
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, squares: torch.Tensor, seeds: list[int | None]) -> torch.Tensor:
        side, crop = squares.shape[-1], self.crop
        centre = centre_window(side, crop).start
        tops, lefts, flips = [], [], []
        for seed in seeds:
            top = left = centre
            flipped = False
            if seed is not None:
                with seeded_cpu_random(seed):
                    if self.random_crop and side > crop:  # RandomCrop: nothing drawn if it fits
                        top = int(torch.randint(0, side - crop + 1, size=(1,)).item())
                        left = int(torch.randint(0, side - crop + 1, size=(1,)).item())
                    flipped = self.flip and bool(torch.rand(1) < 0.5)
            tops.append(top)
            lefts.append(left)
            flips.append(flipped)
        indices = torch.arange(len(seeds))
        pixels = window_crops(squares, crop, indices, torch.tensor(tops), torch.tensor(lefts))
        if any(flips):
            pixels = torch.where(torch.tensor(flips).view(-1, 1, 1, 1), pixels.flip(-1), pixels)
        return normalized(pixels, self.mean, self.std)
