"""Datasets and DataLoaders.

Three sources, chosen by `data.dataset`:
- `shapes`: the built-in dataset, generated in memory from the seed (see shapes.py);
- `imagefolder`: the user's images in `data.root/train/<class>/` and `data.root/val/<class>/`;
- a torchvision dataset by name (cifar10, cifar100, mnist, fashionmnist) stored in `data.root`.

The order of samples comes only from (seed, epoch), through a seeded sampler, so a run can
stop in the middle of an epoch and continue with exactly the batches it would have seen.
torchvision is imported only for the sources that need it.
"""

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from .config import ConfigError, DataConfig
from .shapes import SHAPE_CLASSES, make_shapes

# name -> (torchvision class, image channels)
TORCHVISION_DATASETS = {
    "cifar10": ("CIFAR10", 3),
    "cifar100": ("CIFAR100", 3),
    "mnist": ("MNIST", 1),
    "fashionmnist": ("FashionMNIST", 1),
}
DATASET_CHOICES = ("shapes", "imagefolder", *TORCHVISION_DATASETS)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataBundle:
    """What the rest of training needs to know about the data."""

    train: Dataset
    val: Dataset
    classes: list[str]
    in_channels: int


class ShapesDataset(Dataset):
    """Images held in memory as one uint8 tensor; indexing takes one index or a whole batch.

    Batched indexing (a list or tensor of indices in, a stacked batch out) skips
    per-sample Python and collation, which on a CPU is a large part of the cost of small
    images. Datasets with `supports_batch_indexing` and `to(device)` are served by
    InMemoryLoader.
    """

    supports_batch_indexing = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
        self.images = images
        self.labels = labels
        self.classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        # (x / 255 - 0.5) / 0.25 in two in-place operations instead of four.
        images = self.images[index].float().mul_(4.0 / 255.0).sub_(2.0)
        return images, self.labels[index]

    def to(self, device: torch.device) -> "ShapesDataset":
        """The same images and labels held on `device` (a no-op when already there)."""
        return ShapesDataset(self.images.to(device), self.labels.to(device), self.classes)


def build_datasets(cfg: DataConfig, seed: int) -> DataBundle:
    if cfg.dataset == "shapes":
        return _shapes(cfg, seed)
    if cfg.dataset == "imagefolder":
        return _image_folder(cfg)
    if cfg.dataset in TORCHVISION_DATASETS:
        return _torchvision_dataset(cfg)
    raise ConfigError(
        f"data.dataset={cfg.dataset!r} is not a known dataset; choose one of: "
        f"{', '.join(DATASET_CHOICES)}"
    )


def _shapes(cfg: DataConfig, seed: int) -> DataBundle:
    classes = list(SHAPE_CLASSES)
    # Validation images come from a different seed, so they are new images, not copies.
    train = ShapesDataset(*make_shapes(cfg.train_size, cfg.image_size, seed), classes)
    val = ShapesDataset(*make_shapes(cfg.val_size, cfg.image_size, seed + 1_000_003), classes)
    return DataBundle(train, val, classes, in_channels=3)


def _to_rgb(image):
    # A module-level function, not a lambda, so worker processes can unpickle it.
    return image.convert("RGB")


def _image_transforms(image_size: int, train: bool):
    from torchvision import transforms

    if train:
        steps = [
            transforms.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(),
        ]
    else:
        steps = [
            transforms.Resize(math.ceil(image_size * 1.14), antialias=True),
            transforms.CenterCrop(image_size),
        ]
    return transforms.Compose(
        [
            transforms.Lambda(_to_rgb),
            *steps,
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _image_folder(cfg: DataConfig) -> DataBundle:
    from torchvision.datasets import ImageFolder

    root = Path(cfg.root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ConfigError(
                f"data.root={cfg.root!r}: folder {root / split} does not exist; put one "
                f"sub-folder per class in {root / 'train'} and {root / 'val'}"
            )
    try:
        train = ImageFolder(str(root / "train"), transform=_image_transforms(cfg.image_size, True))
        val = ImageFolder(str(root / "val"), transform=_image_transforms(cfg.image_size, False))
    except (FileNotFoundError, RuntimeError) as error:
        raise ConfigError(f"data.root={cfg.root!r}: {error}") from None
    unknown = sorted(set(val.classes) - set(train.classes))
    if unknown:
        raise ConfigError(
            f"data.root={cfg.root!r}: classes {unknown} are in val/ but not in train/; "
            "every validation class needs training images"
        )
    # Validation labels must use the training class indices, even if val/ lacks a class.
    val.class_to_idx = train.class_to_idx
    val.samples = [(path, train.class_to_idx[val.classes[label]]) for path, label in val.samples]
    val.targets = [label for _, label in val.samples]
    return DataBundle(train, val, list(train.classes), in_channels=3)


def _torchvision_dataset(cfg: DataConfig) -> DataBundle:
    import torchvision

    class_name, channels = TORCHVISION_DATASETS[cfg.dataset]
    dataset_class = getattr(torchvision.datasets, class_name)
    splits = []
    for train in (True, False):
        transform = _tensor_transforms(cfg.image_size, channels, train)
        try:
            splits.append(
                dataset_class(cfg.root, train=train, download=cfg.download, transform=transform)
            )
        except RuntimeError as error:
            if "not found" not in str(error).lower():
                raise
            raise ConfigError(
                f"data.dataset={cfg.dataset}: no {class_name} files in {Path(cfg.root).resolve()}; "
                f"put them there or run once with data.download=true"
            ) from None
    return DataBundle(splits[0], splits[1], list(splits[0].classes), in_channels=channels)


def _tensor_transforms(image_size: int, channels: int, train: bool):
    from torchvision import transforms

    steps = [transforms.Resize(image_size, antialias=True)]
    if train:
        steps += [transforms.RandomCrop(image_size, padding=image_size // 8)]
        if channels == 3:
            steps += [transforms.RandomHorizontalFlip()]
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


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


def build_loader(
    dataset: Dataset,
    cfg: DataConfig,
    *,
    train: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    device: torch.device | None = None,
):
    """The batches of `dataset`: shuffled per epoch from `seed` when training, sharded over
    `world_size` processes. Datasets held whole in memory are sliced on `device` directly
    (InMemoryLoader); the others go through a DataLoader with `data.num_workers` workers."""
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
        return InMemoryLoader(dataset, batches, device or torch.device("cpu"))
    # Datasets read from files apply random transforms when training: seed them per sample.
    if train:
        dataset = SeededAugmentation(dataset, seed)
    batch_sampler = EpochBatchSampler(sampler, cfg.batch_size, drop_last, with_epoch=train)
    common = dict(
        num_workers=cfg.num_workers,
        pin_memory=pin_memory,
        persistent_workers=cfg.num_workers > 0,
        # The loader draws worker seeds from this generator, never from the global RNG,
        # so loading does not shift the random stream of the training itself.
        generator=torch.Generator().manual_seed(seed),
    )
    return DataLoader(dataset, batch_sampler=batch_sampler, **common)


def epoch_batch_sampler(loader) -> EpochBatchSampler | TensorBatchSampler:
    """The batch sampler behind a loader made by `build_loader`: `set_epoch` positions it."""
    return loader.batch_sampler
