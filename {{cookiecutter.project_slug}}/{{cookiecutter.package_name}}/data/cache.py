"""The decoded-image cache (data.cache): image files and torchvision datasets decoded once
into memory, then served like the built-in data, a batch at a time with tensor operations,
bit for bit the tensors the uncached path gives. Checked first against the memory
available on the host and on the training device. The cache on disk (data.cache=disk,
disk_cache.py) decodes through the same path and serves batches through the same class."""

import logging
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import ConfigError, DataConfig
from ..device import copy_to, processes_on_this_machine
from ..log import log_choice
from .bundle import DataBundle, DataError
from .cache_place import disk_choice
from .folders import ImageFiles
from .images import UnreadableImage, open_image
from .skip_bad import report_left_out
from .stats import normalization_stats
from .transforms import ConvertMode, CropSquare, centre_window, interpolation_of, resize_side

# The project's logger (the package's, not this module's).
logger = logging.getLogger(__name__.split(".")[0])


class CachedImages(Dataset):
    """Decoded images held whole in memory (data.cache): uint8 [N, C, S, S], S >= `crop`.

    Indexing (one index or a batch of them) gives the centre crops of side `crop`,
    normalised: what evaluation sees. `augmented` gives a training batch, randomly cropped
    and flipped. Either is a few tensor operations per batch, instead of PIL and the
    torchvision transforms per image. The squares are placed by CropSquare and the
    arithmetic is ToTensor's and Normalize's, so the centre crops equal the uncached
    path's tensors bit for bit.
    """

    supports_batch_indexing = True

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: list[str],
        crop: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        self.images, self.labels = images, labels
        self.classes = classes
        self.crop = crop
        self.mean, self.std = tuple(mean), tuple(std)
        self._statistics_on(images.device)

    def _statistics_on(self, device: torch.device) -> None:
        # Held on the images' device: made per batch, they would be a copy to it each time.
        self._mean = torch.tensor(self.mean, device=device).view(-1, 1, 1)
        self._std = torch.tensor(self.std, device=device).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        window = centre_window(self.images.shape[-1], self.crop)
        return self.normalize(self.squares(index)[..., window, window]), self.labels[index]

    def squares(self, index) -> torch.Tensor:
        """The whole stored squares of `index` (one index or a batch of them)."""
        return self.images[index]

    def augmented(
        self, indices: torch.Tensor, generator: torch.Generator, random_crop: bool, flip: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch of `indices`: each image cropped at a random place (or the
        centre) and flipped with probability 1/2, as RandomCrop and RandomHorizontalFlip
        would. The random numbers come from `generator`, a CPU one, so that a batch is the
        same on every device."""
        count, side, crop = len(indices), self.images.shape[-1], self.crop
        if random_crop:
            tops = torch.randint(0, side - crop + 1, (count,), generator=generator)
            lefts = torch.randint(0, side - crop + 1, (count,), generator=generator)
        else:
            tops = lefts = torch.full((count,), centre_window(side, crop).start)
        pixels = self.crops(indices, tops, lefts)
        if flip:
            flips = torch.rand(count, generator=generator) < 0.5
            flips = copy_to(flips, pixels.device).view(-1, 1, 1, 1)
            pixels = torch.where(flips, pixels.flip(-1), pixels)
        return self.normalize(pixels), self.labels[indices]

    def crops(self, indices: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor):
        """uint8 [B, C, crop, crop]: the window of image indices[i] at (tops[i], lefts[i])."""
        return window_crops(self.images, self.crop, indices, tops, lefts)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return normalized(pixels, self._mean, self._std)

    def to(self, device: torch.device) -> "CachedImages":
        """These images, moved to `device` in place: the host copy of a large cache is freed
        rather than kept beside the device's."""
        if self.images.device != torch.device(device):
            check_cache_fits(self.images.numel(), torch.device(device))
            self.images, self.labels = self.images.to(device), self.labels.to(device)
            self._statistics_on(self.images.device)
        return self


def window_crops(
    images: torch.Tensor, crop: int, indices: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor
) -> torch.Tensor:
    """uint8 [B, C, crop, crop]: the window of images[indices[i]] at (tops[i], lefts[i])."""
    device = images.device
    # Every window of side `crop` of every image, as a view (nothing copied):
    # [N, C, side - crop + 1, side - crop + 1, crop, crop]. Picking one window per image
    # is then a single gather (2.6x faster on a CPU than indexing rows and columns).
    windows = images.unfold(2, crop, 1).unfold(3, crop, 1)
    return windows[indices, :, copy_to(tops, device), copy_to(lefts, device)]


def normalized(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> (x / 255 - mean) / std in float32 (mean and std [C, 1, 1]), computed
    as ToTensor and Normalize compute it (not as one fused multiply-add), for bit-identical
    results."""
    return pixels.float().div_(255).sub_(mean).div_(std)


class _Decoding(Dataset):
    """Sample `index` of an image dataset as (uint8 tensor or None, label, problem or None).

    An unreadable file comes back as its problem, (error message, data.skip_bad's warning),
    instead of an exception, for the main process to stop on or skip: an exception raised
    in a DataLoader worker would arrive there wrapped in the worker's traceback.
    """

    def __init__(self, dataset: Dataset, transform) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if isinstance(self.dataset, ImageFiles):
            path, label = self.dataset.samples[index]
            try:
                image = open_image(path)
            except UnreadableImage as error:
                return None, label, (str(error), error.skip_warning)
        else:
            image, label = self.dataset[index]  # torchvision: a PIL image, no transform yet
        return self.transform(image), label, None


def decoded_samples(
    dataset: Dataset,
    cfg: DataConfig,
    channels: int,
    side: int,
    left_out: list[str],
    workers: int | None = None,
):
    """(uint8 [C, side, side], label) of each image of `dataset`, in order.

    Each image is converted, resized as image_transform does, and cropped to the square
    that CropSquare places; the PIL work runs in `workers` worker processes (default
    `data.num_workers`). With `data.skip_bad`, an unreadable file is left out (its warning
    appended to `left_out`), as skip_bad.leave_out_undecodable leaves it out without the
    cache; without it, a DataError names the file.
    """
    from torchvision import transforms

    steps = [ConvertMode("L" if channels == 1 else "RGB")]
    if resize_side(cfg):
        steps.append(transforms.Resize(resize_side(cfg), interpolation_of(cfg), antialias=True))
    steps += [CropSquare(side, cfg.image_size), transforms.PILToTensor()]
    decoding = _Decoding(dataset, transforms.Compose(steps))
    workers = cfg.num_workers if workers is None else workers
    # A generator of its own: the loader draws a seed from it, which from the global RNG
    # would make training differ between a run that decodes and one that finds its
    # decoded images on disk.
    loader = DataLoader(
        decoding,
        batch_size=64,
        num_workers=workers,
        collate_fn=list,
        generator=torch.Generator(),
    )
    for batch in loader:
        for pixels, label, problem in batch:
            if problem is None:
                yield pixels, label
                continue
            message, skip_warning = problem
            if not cfg.skip_bad:
                raise DataError(message)
            left_out.append(skip_warning)


def decode_images(
    dataset: Dataset, cfg: DataConfig, channels: int, side: int, what: str = "training"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of `dataset` as uint8 [N, C, side, side], and the labels [N], decoded by
    decoded_samples; with `data.skip_bad` N is smaller by the files left out, each named
    in a warning (`what` names the set there)."""
    # Filled in place: concatenating per-batch tensors would need twice the memory.
    images = torch.empty((len(dataset), channels, side, side), dtype=torch.uint8)
    labels = torch.empty(len(dataset), dtype=torch.long)
    count, left_out = 0, []
    for pixels, label in decoded_samples(dataset, cfg, channels, side, left_out):
        images[count], labels[count] = pixels, label
        count += 1
    report_left_out(left_out, len(dataset), what)
    return images[:count], labels[:count]


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device`, or None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:  # MemAvailable counts the page cache the kernel can drop; free pages alone would not
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_cache_fits(size: int, device: torch.device, copies: int = 1) -> None:
    """Stop with ConfigError before filling `device` beyond its available memory."""
    available = available_memory(device)
    if available is None or size * copies <= available:
        return
    each = f" ({copies} processes, a copy each)" if copies > 1 else ""
    raise ConfigError(
        f"data.cache=true needs {size * copies / 2**20:,.1f} MB for the decoded images"
        f"{each}, but {device} has {available / 2**20:,.1f} MB available; set "
        "data.cache=false, or a smaller data.resize (the cache holds squares of that side)"
    )


# The share of the free memory that an automatic data.cache may fill.
CACHE_SHARE = 0.25


def choose_cache(cfg: DataConfig, images: int, channels: int) -> bool | str:
    """data.cache=null: in memory (True) when the decoded images take at most CACHE_SHARE of
    the free memory (every process of a job on this machine holds a copy), else on disk
    ("disk") when one copy takes at most cache_place.DISK_SHARE of the free space in the
    cache's folder, else none (False); logged either way."""
    side = resize_side(cfg) or cfg.image_size
    copies = processes_on_this_machine()
    size = images * channels * side * side
    available = available_memory(torch.device("cpu"))
    if available is None:
        memory = "the free memory cannot be told on this machine"
    else:
        fits = size * copies <= CACHE_SHARE * available
        words = "at most" if fits else "more than"
        memory = (
            f"the decoded images take {size * copies / 2**20:,.1f} MB, {words} a quarter of "
            f"the {available / 2**20:,.0f} MB free"
        )
        if fits:
            log_choice("data.cache", True, memory)
            return True
    on_disk, disk = disk_choice(cfg, size)
    if on_disk:
        log_choice("data.cache", "disk", f"{memory}; {disk}")
        return "disk"
    log_choice(
        "data.cache",
        False,
        f"{memory}; {disk}; the images are read from their files every epoch instead",
    )
    return False


def cached_bundle(
    cfg: DataConfig,
    train: Dataset,
    val: Dataset,
    classes: list[str],
    channels: int,
    stats_file: Path | None,
) -> DataBundle:
    """data.cache: both sets decoded once, into CachedImages."""
    # With data.resize=0 nothing is resized: only a square of image_size fits every image.
    side = resize_side(cfg) or cfg.image_size
    size = (len(train) + len(val)) * channels * side * side
    # Every process of a job on this machine decodes its own copy into host memory.
    check_cache_fits(size, torch.device("cpu"), processes_on_this_machine())
    started = time.perf_counter()
    train_images, train_labels = decode_images(train, cfg, channels, side)
    val_images, val_labels = decode_images(val, cfg, channels, side, "validation")
    logger.info(
        "data.cache: %d train + %d val images decoded into memory, %dx%dx%d each, %.1f MB, "
        "in %.1f s",
        len(train_images),
        len(val_images),
        channels,
        side,
        side,
        (train_images.numel() + val_images.numel()) / 2**20,
        time.perf_counter() - started,
    )
    mean, std, source = normalization_stats(cfg, train_images, channels, stats_file)
    cached = [
        CachedImages(images, labels, classes, cfg.image_size, mean, std)
        for images, labels in ((train_images, train_labels), (val_images, val_labels))
    ]
    return DataBundle(*cached, classes, channels, mean, std, source, cached=True)
