"""Datasets and DataLoaders.

Three sources, chosen by `data.dataset`:
- `shapes`: the built-in dataset, generated in memory from the seed (see shapes.py);
- `imagefolder`: the user's images, in `data.root/train/<class>/` and `data.root/val/<class>/`,
  or in `data.root/<class>/` split into train and val by `data.val_fraction`;
- a torchvision dataset by name (cifar10, cifar100, mnist, fashionmnist) stored in `data.root`.

Image files are checked once when the dataset is built, so a broken file, an empty class
folder or a wrong layout stops the run at once with one error naming the file or folder,
instead of a traceback from a DataLoader worker an hour later.

The order of samples comes only from (seed, epoch), through a seeded sampler, so a run can
stop in the middle of an epoch and continue with exactly the batches it would have seen.
torchvision and PIL are imported only for the sources that need them.

With `data.cache`, image files and torchvision datasets are decoded once into memory
(CachedImages) and served like the built-in data, a batch at a time with tensor operations.
"""

import itertools
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from .config import ConfigError, DataConfig
from .shapes import SHAPE_CLASSES, make_shapes

logger = logging.getLogger(__name__.rsplit(".", 1)[0])

# name -> (torchvision class, image channels)
TORCHVISION_DATASETS = {
    "cifar10": ("CIFAR10", 3),
    "cifar100": ("CIFAR100", 3),
    "mnist": ("MNIST", 1),
    "fashionmnist": ("FashionMNIST", 1),
}
DATASET_CHOICES = ("shapes", "imagefolder", *TORCHVISION_DATASETS)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
# PIL modes that hold one channel of intensity.
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
# The built-in shapes are normalised with fixed statistics: nothing to compute.
SHAPES_MEAN, SHAPES_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# Mean and std are estimated from this many training images, spread over the whole set.
STATS_IMAGES = 500
STATS_FILE = "normalization.json"


class DataError(ConfigError):
    """A problem with the data files; the message names the file or folder and the fix."""


@dataclass
class DataBundle:
    """What the rest of training needs to know about the data."""

    train: Dataset
    val: Dataset
    classes: list[str]
    in_channels: int
    mean: tuple[float, ...] = SHAPES_MEAN
    std: tuple[float, ...] = SHAPES_STD
    stats_source: str = "built-in"  # built-in, config, computed or cached

    def normalization(self) -> dict:
        """The statistics the images were normalised with, as saved in checkpoints."""
        return {"mean": list(self.mean), "std": list(self.std)}


class ShapesDataset(Dataset):
    """Images held in memory, normalised once; indexing takes one index or a whole batch.

    Batched indexing (a list or tensor of indices in, a stacked batch out) skips
    per-sample Python and collation, which on a CPU is a large part of the cost of small
    images. Datasets with `supports_batch_indexing` and `to(device)` are served by
    InMemoryLoader.
    """

    supports_batch_indexing = True

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: list[str],
        mean: tuple[float, ...] = SHAPES_MEAN,
        std: tuple[float, ...] = SHAPES_STD,
    ) -> None:
        self.images = images
        self.labels = labels
        self.classes = classes
        self.mean, self.std = tuple(mean), tuple(std)
        # Normalised once, here, as float32: (x / 255 - mean) / std = x * scale - shift.
        # A batch is then a single indexing operation instead of four passes over it
        # (measured 90 us of a 0.8 ms MLP step), for 4x the memory of the uint8 images.
        std_tensor = torch.tensor(std, device=images.device).view(-1, 1, 1)
        scale = 1.0 / (255.0 * std_tensor)
        shift = torch.tensor(mean, device=images.device).view(-1, 1, 1) / std_tensor
        self.normalized = images.float().mul_(scale).sub_(shift)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        if isinstance(index, torch.Tensor) and index.dim() == 1:
            # The batched path: index_select copies the rows directly, where general
            # indexing with a tensor goes through a slower gather (12 vs 30 us a batch).
            return self.normalized.index_select(0, index), self.labels.index_select(0, index)
        return self.normalized[index], self.labels[index]

    def to(self, device: torch.device) -> "ShapesDataset":
        """The same images and labels held on `device`."""
        if self.labels.device == torch.device(device):
            return self
        images, labels = self.images.to(device), self.labels.to(device)
        return ShapesDataset(images, labels, self.classes, self.mean, self.std)


def build_datasets(cfg: DataConfig, seed: int, stats_file: Path | None = None) -> DataBundle:
    """The training and validation sets named by `cfg.dataset`.

    For image sources with `data.mean`/`data.std` null, the statistics are read from
    `stats_file` when it exists, else computed from the training set (the caller saves
    them there with `save_stats` once the run folder exists).
    """
    if cfg.dataset == "shapes":
        return _shapes(cfg, seed)
    if cfg.dataset == "imagefolder":
        train, val, classes, channels = _image_folder(cfg)
    elif cfg.dataset in TORCHVISION_DATASETS:
        train, val, classes, channels = _torchvision_dataset(cfg)
    else:
        raise ConfigError(
            f"data.dataset={cfg.dataset!r} is not a known dataset; choose one of: "
            f"{', '.join(DATASET_CHOICES)}"
        )
    if cfg.cache:
        return _cached(cfg, train, val, classes, channels, stats_file)
    mean, std, source = _normalization_stats(cfg, train, channels, stats_file)
    train.transform = image_transform(cfg, channels, train=True, mean=mean, std=std)
    val.transform = image_transform(cfg, channels, train=False, mean=mean, std=std)
    return DataBundle(train, val, classes, channels, mean, std, source)


def _shapes(cfg: DataConfig, seed: int) -> DataBundle:
    if cfg.channels not in (None, 3):
        raise ConfigError(
            f"data.channels={cfg.channels}: the built-in shapes are RGB; use data.channels=null"
        )
    classes = list(SHAPE_CLASSES)
    mean, std, source = SHAPES_MEAN, SHAPES_STD, "built-in"
    if cfg.mean is not None:
        if len(cfg.mean) != 3:
            raise ConfigError(f"data.mean={cfg.mean}: the built-in shapes need 3 numbers (RGB)")
        mean, std, source = tuple(cfg.mean), tuple(cfg.std), "config"
    # Validation images come from a different seed, so they are new images, not copies.
    train_images = make_shapes(cfg.train_size, cfg.image_size, seed)
    val_images = make_shapes(cfg.val_size, cfg.image_size, seed + 1_000_003)
    train = ShapesDataset(*train_images, classes, mean, std)
    val = ShapesDataset(*val_images, classes, mean, std)
    return DataBundle(train, val, classes, 3, mean, std, source)


class ConvertMode:
    """Convert a PIL image to `mode` ("L" or "RGB"); a class, so worker processes can
    unpickle it."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image):
        return image if image.mode == self.mode else image.convert(self.mode)


def image_transform(
    cfg: DataConfig,
    channels: int,
    train: bool,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
):
    """PIL image -> normalised tensor: convert, resize, crop (random when training), flip.

    Without `mean`, the tensor is left in [0, 1] (used to compute the statistics).
    """
    from torchvision import transforms

    steps = [ConvertMode("L" if channels == 1 else "RGB")]
    resize = resize_side(cfg)
    if resize:
        steps.append(transforms.Resize(resize, antialias=True))
    if train and cfg.random_crop:
        steps.append(transforms.RandomCrop(cfg.image_size))
    else:
        steps.append(transforms.CenterCrop(cfg.image_size))
    if train and cfg.flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps.append(transforms.ToTensor())
    if mean is not None:
        steps.append(transforms.Normalize(mean, std))
    return transforms.Compose(steps)


def resize_side(cfg: DataConfig) -> int:
    """The side that images' shorter side is resized to; 0 means no resize."""
    return cfg.resize if cfg.resize is not None else math.ceil(cfg.image_size * 1.14)


class ImageFiles(Dataset):
    """Image files listed as (path, label) pairs, decoded with PIL when indexed.

    Files were checked when the list was made; one that still fails to decode (a JPEG cut
    short, say) is an error naming it, or with `skip_bad` a warning, and the next file of
    the list takes its place so that batches keep their size and the run its determinism.
    """

    def __init__(
        self, samples: list[tuple[Path, int]], classes: list[str], skip_bad: bool = False
    ) -> None:
        self.samples = samples
        self.classes = classes
        self.skip_bad = skip_bad
        self.targets = [label for _, label in samples]
        self.transform = None  # set by build_datasets

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self.samples):
            raise IndexError(index)  # ends iteration over the dataset, as for a list
        for attempt in range(len(self.samples)):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                image = open_image(path)
            except DataError as error:
                if not self.skip_bad:
                    raise
                logger.warning("skipping: %s", error)
                continue
            return (self.transform(image) if self.transform else image), label
        raise DataError(f"none of the {len(self.samples)} images could be decoded")


def open_image(path: Path):
    """The decoded image at `path`, or DataError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(
            f"{path} is not a readable image ({_reason(error, path)}); replace or delete it, "
            "or set data.skip_bad=true to skip unreadable images with a warning"
        ) from None


def _reason(error: Exception, path: Path) -> str:
    """The first line of PIL's message, without the path that the error names already."""
    text = str(error).strip().replace(f" '{path}'", "").replace(str(path), "the file")
    return text.splitlines()[0] if text else type(error).__name__


def _image_folder(cfg: DataConfig) -> tuple[ImageFiles, ImageFiles, list[str], int]:
    """The user's images: root/train + root/val, or root/<class> (or root/train) split."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(
            f"data.root={cfg.root!r}: folder {root.resolve()} does not exist; point data.root "
            "at the folder that holds train/ and val/ (or one sub-folder per class)"
        )
    has_train, has_val = (root / "train").is_dir(), (root / "val").is_dir()
    if has_val and not has_train:
        raise DataError(
            f"data.root={cfg.root!r}: {root / 'val'} exists but {root / 'train'} does not; "
            "put the training images in train/<class>/ beside val/"
        )
    started = time.perf_counter()
    train_folder = root / "train" if has_train else root
    classes, train_files = _scan_class_folders(train_folder)
    if has_val:
        val_classes, val_files = _scan_class_folders(root / "val")
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise DataError(
                f"data.root={cfg.root!r}: classes {unknown} are in val/ but not in train/; "
                "every validation class needs training images (check the folder names)"
            )
    modes, tiny = set(), []
    for files in [*train_files.values(), *(val_files.values() if has_val else [])]:
        files[:] = _check_images(files, cfg, modes, tiny)
    if tiny:
        path, (width, height) = tiny[0]
        logger.warning(
            "%d images are smaller than half of data.image_size=%d (e.g. %s, %dx%d) and are "
            "scaled up a lot; a smaller data.image_size may suit them better",
            len(tiny),
            cfg.image_size,
            path,
            width,
            height,
        )
    _check_no_empty_class(train_folder, train_files)
    if has_val:
        _check_no_empty_class(root / "val", val_files)
        train_samples = _labelled(train_files, classes)
        val_samples = _labelled(val_files, classes)
    else:
        if cfg.val_fraction == 0:
            raise DataError(
                f"data.root={cfg.root!r} has no val/ folder and data.val_fraction=0; add "
                f"{root / 'val'}/<class>/ folders or set data.val_fraction=0.2"
            )
        train_samples, val_samples = _split(train_files, classes, cfg, train_folder)
    channels = cfg.channels or (1 if modes and modes <= set(GRAYSCALE_MODES) else 3)
    logger.info(
        "imagefolder %s: %d classes, %d train / %d val images (%s), %d channel%s, "
        "checked in %.1f s",
        root,
        len(classes),
        len(train_samples),
        len(val_samples),
        "train/ and val/" if has_val else f"{cfg.val_fraction:.0%} held out for validation",
        channels,
        "" if channels == 1 else "s",
        time.perf_counter() - started,
    )
    train = ImageFiles(train_samples, classes, cfg.skip_bad)
    return train, ImageFiles(val_samples, classes, cfg.skip_bad), classes, channels


def _scan_class_folders(folder: Path) -> tuple[list[str], dict[str, list[Path]]]:
    """Class names (sub-folder names, sorted) and each class's image files (recursively)."""
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    classes = sorted(entry.name for entry in entries if entry.is_dir())
    if not classes:
        loose = [entry for entry in entries if is_image_file(entry)]
        where = f"holds {len(loose)} images but no class folders" if loose else "is empty"
        raise DataError(
            f"{folder} {where}; put the images in one sub-folder per class, e.g. "
            f"{folder / 'cat' / '001.png'} (supported: {', '.join(IMAGE_SUFFIXES)})"
        )
    files = {
        name: sorted(path for path in (folder / name).rglob("*") if is_image_file(path))
        for name in classes
    }
    if not any(files.values()):
        raise DataError(
            f"no images in {folder}: its class folders ({', '.join(classes[:5])}"
            f"{', ...' if len(classes) > 5 else ''}) hold no files ending in "
            f"{', '.join(IMAGE_SUFFIXES)}"
        )
    _check_no_empty_class(folder, files)
    return classes, files


def is_image_file(path: Path) -> bool:
    hidden = path.name.startswith(".")
    return path.suffix.lower() in IMAGE_SUFFIXES and not hidden and path.is_file()


def _check_no_empty_class(folder: Path, files: dict[str, list[Path]]) -> None:
    for name, paths in files.items():
        if not paths:
            raise DataError(
                f"class folder {folder / name} has no usable images; add some (supported: "
                f"{', '.join(IMAGE_SUFFIXES)}) or remove the folder"
            )


def _check_images(paths: list[Path], cfg: DataConfig, modes: set, tiny: list) -> list[Path]:
    """The readable images among `paths`; their PIL modes are added to `modes`, and
    (path, size) of those less than half as large as the crop to `tiny`.

    Only the header is decoded and the file's checksums verified (cheap); an image that
    fails is an error naming it, or with `data.skip_bad` a warning and it is left out.
    """
    from PIL import Image

    good = []
    for path in paths:
        try:
            with Image.open(path) as image:
                size, mode = image.size, image.mode
                image.verify()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            if not cfg.skip_bad:
                raise DataError(
                    f"{path} is not a readable image ({_reason(error, path)}); replace or "
                    "delete it, or set data.skip_bad=true to skip unreadable images with a warning"
                ) from None
            logger.warning("skipping %s: not a readable image (%s)", path, _reason(error, path))
            continue
        if not cfg.resize and cfg.resize is not None and min(size) < cfg.image_size:
            raise DataError(
                f"{path} is {size[0]}x{size[1]} pixels, smaller than the crop of "
                f"data.image_size={cfg.image_size} with data.resize=0; use data.resize=null "
                "to scale images first, or a smaller data.image_size"
            )
        if 2 * min(size) < cfg.image_size:
            tiny.append((path, size))
        modes.add(mode)
        good.append(path)
    return good


def _labelled(files: dict[str, list[Path]], classes: list[str]) -> list[tuple[Path, int]]:
    """(path, label) pairs, labels being indices into the training classes."""
    index = {name: label for label, name in enumerate(classes)}
    return [(path, index[name]) for name in sorted(files) for path in files[name]]


def _split(
    files: dict[str, list[Path]], classes: list[str], cfg: DataConfig, folder: Path
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """A stratified split: each class gives `val_fraction` of its images (at least one) to
    validation. Each class is shuffled by its own seeded generator, so adding a class or
    images to one class leaves the split of the others as it was."""
    train, val = [], []
    for label, name in enumerate(classes):
        paths = list(files[name])
        held_out = max(1, round(len(paths) * cfg.val_fraction))
        if len(paths) - held_out < 1:
            raise DataError(
                f"too few images for the split: class folder {folder / name} has "
                f"{len(paths)} image{'s' if len(paths) != 1 else ''}, and data.val_fraction="
                f"{cfg.val_fraction} needs at least 2 per class (one to train, one to "
                "validate); add images, or give separate train/ and val/ folders"
            )
        random.Random(f"{cfg.split_seed}/{name}").shuffle(paths)
        val += [(path, label) for path in sorted(paths[:held_out])]
        train += [(path, label) for path in sorted(paths[held_out:])]
    return train, val


def _torchvision_dataset(cfg: DataConfig):
    import torchvision

    class_name, native_channels = TORCHVISION_DATASETS[cfg.dataset]
    dataset_class = getattr(torchvision.datasets, class_name)
    splits = []
    for train in (True, False):
        try:
            splits.append(dataset_class(cfg.root, train=train, download=cfg.download))
        except RuntimeError as error:
            if "not found" not in str(error).lower():
                raise
            raise DataError(
                f"data.dataset={cfg.dataset}: no {class_name} files in "
                f"{Path(cfg.root).resolve()}; put them there, or run once with "
                "data.download=true to download them (needs a network connection)"
            ) from None
    channels = cfg.channels or native_channels
    return splits[0], splits[1], list(splits[0].classes), channels


def _normalization_stats(
    cfg: DataConfig, train: Dataset | torch.Tensor, channels: int, stats_file: Path | None
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, where they came from): the config, the run folder's cache, or computed.

    `train` is the training set, or with data.cache its decoded images (uint8 [N, C, S, S]).
    """
    if cfg.mean is not None:
        if len(cfg.mean) != channels:
            raise ConfigError(
                f"data.mean={cfg.mean} has {len(cfg.mean)} numbers but the images have "
                f"{channels} channel(s); give one number per channel, or set data.channels"
            )
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
    window = _centre_window(images.shape[-1], crop)
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
    path.write_text(json.dumps(data.normalization(), indent=2) + "\n", encoding="utf-8")


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
        window = _centre_window(self.images.shape[-1], self.crop)
        return self.normalize(self.images[index][..., window, window]), self.labels[index]

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
            tops = lefts = torch.full((count,), _centre_window(side, crop).start)
        device = self.images.device
        # Every window of side `crop` of every image, as a view (nothing copied):
        # [N, C, side - crop + 1, side - crop + 1, crop, crop]. Picking one window per image
        # is then a single gather (2.6x faster on a CPU than indexing rows and columns).
        windows = self.images.unfold(2, crop, 1).unfold(3, crop, 1)
        pixels = windows[indices, :, tops.to(device), lefts.to(device)]
        if flip:
            flips = torch.rand(count, generator=generator) < 0.5
            pixels = torch.where(flips.to(device).view(-1, 1, 1, 1), pixels.flip(-1), pixels)
        return self.normalize(pixels), self.labels[indices]

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> (x / 255 - mean) / std in float32, computed as ToTensor and
        Normalize compute it (not as one fused multiply-add), for bit-identical results."""
        return pixels.float().div_(255).sub_(self._mean).div_(self._std)

    def to(self, device: torch.device) -> "CachedImages":
        """These images, moved to `device` in place: the host copy of a large cache is freed
        rather than kept beside the device's."""
        if self.images.device != torch.device(device):
            check_cache_fits(self.images.numel(), torch.device(device))
            self.images, self.labels = self.images.to(device), self.labels.to(device)
            self._statistics_on(self.images.device)
        return self


def _centre_window(side: int, crop: int) -> slice:
    """The centre crop of `crop` in `side` pixels, rounded as torchvision's CenterCrop."""
    start = int(round((side - crop) / 2.0))
    return slice(start, start + crop)


class CropSquare:
    """Crop a PIL image to a `side` x `side` square around its centre, placed so that the
    centre crop of `crop` taken from the square later is exactly CenterCrop(crop) of the
    whole image. (CenterCrop(side) then CenterCrop(crop) can land a pixel off where the two
    roundings differ, for images that are not square.)"""

    def __init__(self, side: int, crop: int) -> None:
        self.side, self.crop = side, crop

    def __call__(self, image):
        inner = _centre_window(self.side, self.crop).start
        left = _centre_window(image.width, self.crop).start - inner
        top = _centre_window(image.height, self.crop).start - inner
        return image.crop((left, top, left + self.side, top + self.side))


class _Decoding(Dataset):
    """Sample `index` of an image dataset as (uint8 tensor or None, label, problem or None).

    An unreadable file comes back as its problem instead of an exception, for the main
    process to stop on or skip: an exception raised in a DataLoader worker would arrive
    there wrapped in the worker's traceback.
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
            except DataError as error:
                return None, label, str(error)
        else:
            image, label = self.dataset[index]  # torchvision: a PIL image, no transform yet
        return self.transform(image), label, None


def decode_images(
    dataset: Dataset, cfg: DataConfig, channels: int, side: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of `dataset` as uint8 [N, C, side, side], and the labels [N].

    Each image is converted, resized as image_transform does, and cropped to the square
    that CropSquare places; the PIL work runs in `data.num_workers` worker processes. With
    `data.skip_bad`, unreadable files are left out with a warning (N is then smaller).
    """
    from torchvision import transforms

    steps = [ConvertMode("L" if channels == 1 else "RGB")]
    if resize_side(cfg):
        steps.append(transforms.Resize(resize_side(cfg), antialias=True))
    steps += [CropSquare(side, cfg.image_size), transforms.PILToTensor()]
    decoding = _Decoding(dataset, transforms.Compose(steps))
    loader = DataLoader(decoding, batch_size=64, num_workers=cfg.num_workers, collate_fn=list)
    # Filled in place: concatenating per-batch tensors would need twice the memory.
    images = torch.empty((len(dataset), channels, side, side), dtype=torch.uint8)
    labels = torch.empty(len(dataset), dtype=torch.long)
    count = 0
    for batch in loader:
        for pixels, label, problem in batch:
            if problem is not None:
                if not cfg.skip_bad:
                    raise DataError(problem)
                logger.warning("skipping: %s", problem)
                continue
            images[count], labels[count] = pixels, label
            count += 1
    if count == 0:
        raise DataError(f"none of the {len(dataset)} images could be decoded")
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


def _cached(
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
    check_cache_fits(size, torch.device("cpu"), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    started = time.perf_counter()
    train_images, train_labels = decode_images(train, cfg, channels, side)
    val_images, val_labels = decode_images(val, cfg, channels, side)
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
    mean, std, source = _normalization_stats(cfg, train_images, channels, stats_file)
    cached = [
        CachedImages(images, labels, classes, cfg.image_size, mean, std)
        for images, labels in ((train_images, train_labels), (val_images, val_labels))
    ]
    return DataBundle(*cached, classes, channels, mean, std, source)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of the random augmentation of sample `index` in `epoch`."""
    return (seed * 1_000_003 + epoch) * 1_000_000_007 + index & (2**63 - 1)


class SeededAugmentation(Dataset):
    """Gives sample `index` of `epoch` the same random augmentation in every run.

    Keys are (epoch, index) pairs from EpochBatchSampler. Seeding per sample, instead of
    relying on each worker's global RNG, makes the augmentations independent of the number
    of workers and identical after a resume at any point of an epoch.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]


class EpochBatchSampler(Sampler[list]):
    """Batches of a (distributed) sampler's indices, able to start in the middle of an epoch.

    `set_epoch(epoch, start_batch)` reshuffles for `epoch` exactly as an uninterrupted run
    would, then skips the `start_batch` batches that were already trained on. With
    `with_epoch`, each index comes as an (epoch, index) pair for SeededAugmentation.
    """

    def __init__(
        self, sampler: Sampler[int], batch_size: int, drop_last: bool, with_epoch: bool = False
    ) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.with_epoch = with_epoch
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.epoch = epoch
        self.start_batch = start_batch

    @property
    def batches_per_epoch(self) -> int:
        return len(BatchSampler(self.sampler, self.batch_size, self.drop_last))

    def __iter__(self):
        batches = BatchSampler(self.sampler, self.batch_size, self.drop_last)
        batches = itertools.islice(iter(batches), self.start_batch, None)
        if not self.with_epoch:
            return batches
        return ([(self.epoch, index) for index in batch] for batch in batches)

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start_batch, 0)


class GlobalBatchShardSampler(Sampler[int]):
    """This process's share of a shuffled epoch: its own slice of every global batch.

    The epoch's order is one permutation drawn from (seed, epoch), the same for any number
    of processes. It is cut into global batches of `world_size * batch_size` samples, and
    rank r takes the r-th run of `batch_size` consecutive samples of each (a ragged last
    global batch is split evenly). One process with `train.grad_accum_steps` equal to the
    world size therefore trains on the very same micro-batches as the ranks of a DDP run,
    batch norm statistics included, at least over the whole global batches (an interleaved
    split, as DistributedSampler makes, would mix other samples into each micro-batch).
    Like DistributedSampler, the order is padded by repeating its start so that every rank
    gets the same number of samples; with one process it is the plain permutation.
    """

    def __init__(self, length: int, batch_size: int, rank: int, world_size: int, seed: int):
        self.length = length
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        self.num_samples = math.ceil(length / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        total = self.num_samples * self.world_size
        padding = total - self.length
        order += (order * math.ceil(padding / self.length))[:padding]
        global_batch = self.batch_size * self.world_size
        whole = total // global_batch * global_batch
        share = []
        for start in range(self.rank * self.batch_size, whole, global_batch):
            share += order[start : start + self.batch_size]
        tail = len(order[whole:]) // self.world_size  # the ragged last global batch
        share += order[whole + self.rank * tail : whole + (self.rank + 1) * tail]
        return iter(share)

    def __len__(self) -> int:
        return self.num_samples


class ShardSampler(Sampler[int]):
    """Every `world_size`-th index from `rank`, in order, without padding.

    Used for validation: unlike DistributedSampler it repeats no sample, so metrics summed
    over ranks count each validation image exactly once.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class TensorBatchSampler(EpochBatchSampler):
    """EpochBatchSampler's batches as index tensors, for datasets with batched indexing.

    The sampler's order is turned into one tensor per epoch, and each batch is a slice of
    it: no per-sample Python at each step, and the very batches EpochBatchSampler gives.
    """

    def __iter__(self):
        indices = torch.as_tensor(list(self.sampler), dtype=torch.long)
        for batch in range(self.start_batch, self.batches_per_epoch):
            yield indices[batch * self.batch_size : (batch + 1) * self.batch_size]


class InMemoryLoader:
    """The in-memory fast path: batches sliced from tensors already on the training device.

    For datasets held whole in memory with batched indexing (the built-in shapes): no
    DataLoader, no worker, no collation, no host-to-device copy per batch.
    """

    def __init__(self, dataset, batch_sampler: TensorBatchSampler, device: torch.device) -> None:
        self.dataset = dataset.to(device)
        self.batch_sampler = batch_sampler
        self.device = device

    def __iter__(self):
        for indices in self.batch_sampler:
            yield self.dataset[indices.to(self.device)]

    def __len__(self) -> int:
        return len(self.batch_sampler)


class AugmentingLoader(InMemoryLoader):
    """InMemoryLoader for training on CachedImages: each batch randomly cropped and flipped.

    A batch's random numbers come from a generator seeded with (seed, epoch, the batch's
    first sample index), never from the global RNG: a run resumed in the middle of an epoch
    gets the very batches of an uninterrupted run. Under DDP each rank's batch is a slice
    of the global batch (GlobalBatchShardSampler), so one process with grad_accum_steps
    equal to the world size gets the same micro-batches, augmentations included.
    """

    def __init__(
        self,
        dataset: CachedImages,
        batch_sampler: TensorBatchSampler,
        device: torch.device,
        seed: int,
        random_crop: bool,
        flip: bool,
    ) -> None:
        super().__init__(dataset, batch_sampler, device)
        self.seed = seed
        self.random_crop, self.flip = random_crop, flip

    def __iter__(self):
        for indices in self.batch_sampler:
            seed = sample_seed(self.seed, self.batch_sampler.epoch, int(indices[0]))
            generator = torch.Generator().manual_seed(seed)
            yield self.dataset.augmented(
                indices.to(self.device), generator, self.random_crop, self.flip
            )


def build_loader(
    dataset: Dataset,
    cfg: DataConfig,
    *,
    train: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
):
    """The batches of `dataset`: shuffled per epoch from `seed` when training, sharded over
    `world_size` processes. Datasets held whole in memory are sliced on `device` directly
    (InMemoryLoader; AugmentingLoader for training on cached images); the others go through
    a DataLoader with `data.num_workers` workers."""
    if train:
        if len(dataset) < world_size:
            raise ConfigError(
                f"the training set has {len(dataset)} samples, fewer than the {world_size} "
                "processes; use more data or fewer processes"
            )
        sampler = GlobalBatchShardSampler(len(dataset), cfg.batch_size, rank, world_size, seed)
        # Drop a ragged last batch (batch norm dislikes tiny batches) unless it is the only one.
        drop_last = len(sampler) > cfg.batch_size
    else:
        sampler = ShardSampler(len(dataset), rank, world_size)
        drop_last = False
    if getattr(dataset, "supports_batch_indexing", False):
        batches = TensorBatchSampler(sampler, cfg.batch_size, drop_last)
        device = device or torch.device("cpu")
        if train and isinstance(dataset, CachedImages):
            return AugmentingLoader(dataset, batches, device, seed, cfg.random_crop, cfg.flip)
        return InMemoryLoader(dataset, batches, device)
    # Datasets read from files apply random transforms when training: seed them per sample.
    if train:
        dataset = SeededAugmentation(dataset, seed)
    batch_sampler = EpochBatchSampler(sampler, cfg.batch_size, drop_last, with_epoch=train)
    common = dict(
        num_workers=cfg.num_workers,
        # Page-locked batches copy to a GPU without blocking the training step.
        pin_memory=device is not None and device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        # The loader draws worker seeds from this generator, never from the global RNG,
        # so loading does not shift the random stream of the training itself.
        generator=torch.Generator().manual_seed(seed),
    )
    return DataLoader(dataset, batch_sampler=batch_sampler, **common)


def epoch_batch_sampler(loader) -> EpochBatchSampler | TensorBatchSampler:
    """The batch sampler behind a loader made by `build_loader`: `set_epoch` positions it."""
    return loader.batch_sampler
