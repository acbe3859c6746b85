"""The loader factory: the batches of a dataset for training or validation, through a
DataLoader for images read from files, or sliced from tensors already on the training
device for data held in memory (the built-in shapes, the decoded-image cache)."""

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import ConfigError, DataConfig
from ..device import copy_to
from .cache import CachedImages
from .samplers import (
    EpochBatchSampler,
    GlobalBatchShardSampler,
    ShardSampler,
    TensorBatchSampler,
    sample_seed,
    seeded_cpu_random,
)
from .shards import ShardStream, shard_loader


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
        with seeded_cpu_random(sample_seed(self.seed, epoch, index)):
            return self.dataset[index]


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
            yield self.dataset[copy_to(indices, self.device)]

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
                copy_to(indices, self.device), generator, self.random_crop, self.flip
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
    a DataLoader with `data.num_workers` workers; the shards of data.dataset=shards are
    read as streams (shards.py)."""
    options = _loader_options(cfg, device, seed)
    if isinstance(dataset, ShardStream):
        return shard_loader(
            dataset, cfg, train=train, seed=seed, rank=rank, world_size=world_size, **options
        )
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
    return DataLoader(dataset, batch_sampler=batch_sampler, **options)


def _loader_options(cfg: DataConfig, device: torch.device | None, seed: int) -> dict:
    """The DataLoader settings of every loader of images read from files or shards."""
    return dict(
        num_workers=cfg.num_workers,
        # Page-locked batches copy to a GPU without blocking the training step.
        pin_memory=device is not None and device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        # The loader draws worker seeds from this generator, never from the global RNG,
        # so loading does not shift the random stream of the training itself.
        generator=torch.Generator().manual_seed(seed),
    )


def epoch_batch_sampler(loader) -> EpochBatchSampler | TensorBatchSampler:
    """The batch sampler behind a loader made by `build_loader`: `set_epoch` positions it."""
    return loader.batch_sampler
