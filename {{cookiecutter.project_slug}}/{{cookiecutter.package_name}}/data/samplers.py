"""Samplers: the order of an epoch's samples from (seed, epoch) alone, sharded over the
processes of a run, able to start in the middle of an epoch for an exact resume."""

import contextlib
import itertools
import math
from collections.abc import Iterator

import torch
from torch.utils.data import BatchSampler, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of the random augmentation of sample `index` in `epoch`."""
    return (seed * 1_000_003 + epoch) * 1_000_000_007 + index & (2**63 - 1)


@contextlib.contextmanager
def seeded_cpu_random(seed: int) -> Iterator[None]:
    """The CPU's global random generator seeded with `seed` (what torchvision's random
    transforms draw from) for one sample, and its state put back after.

    Only the CPU generator: torch.manual_seed also seeds every GPU backend's, through lazy
    calls that format the caller's stack each time while CUDA is not initialised (0.1-0.3
    ms a sample, more than decoding a small PNG), and in a process using CUDA it would
    reseed the training's own GPU generator at every sample.
    """
    generator = torch.default_generator
    state = generator.get_state()
    try:
        generator.manual_seed(seed)
        yield
    finally:
        generator.set_state(state)


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
