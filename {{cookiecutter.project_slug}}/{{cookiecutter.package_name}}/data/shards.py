"""data.dataset=shards: training from the tar shards of prepare_shards.py, read as streams
through the webdataset library, from a folder or a URL (data.root; shard_index.py).

The order of an epoch comes from (seed, epoch) alone, as for folders:
- the training shards are shuffled by (seed, epoch), and process `rank` of `world_size`
  reads every world_size-th of them: each process its own shards, together all of them;
- each process's samples pass through a shuffle buffer of data.shuffle_buffer samples,
  seeded by (seed, epoch, rank);
- every process trains on ceil(samples / world_size) samples an epoch (what GlobalBatch-
  ShardSampler gives a folder): one whose shards hold fewer reads its shards again (a new
  buffer order) for the rest, one whose shards hold more leaves its last samples for that
  epoch (which ones changes with the shard order). With one process, every sample once.

The stream of a process is read in the training process itself, as bytes; only decoding and
the transforms run in the DataLoader's workers, which receive each batch's samples as the
"indices" of ShardBatches. So the order does not depend on data.num_workers, the batches
per epoch are known in advance, and a run resumed in the middle of an epoch reads past the
samples it has trained on without decoding them and goes on with exactly the batches of an
uninterrupted run. Random augmentation is seeded per sample by (seed, epoch, the sample's
index in the image folder), as SeededAugmentation seeds it for the folder: the shards give
the very pixels the folder gives. Validation reads the val shards in order, each process
its own, without repeats.

Decoded shards (prepare_shards.py --decoded N) hold each image as the decoded cache stores
it (KEY.npy, uint8 [C, S, S]): nothing is decoded at training, a sample is a crop, a flip
and a normalisation (SquareCrops, drawing as the file transforms draw), and the data
settings the images were decoded with (data.image_size, data.resize, data.interpolation,
data.channels) are the shards' (decoded_settings).

Each shard is checked as it is read: its SHA-256 and sample count against the index (a
damaged or replaced shard stops the run once read to its end, in one line), every sample's
key, class and image suffix as it comes.
"""

import collections
import contextlib
import hashlib
import io
import itertools
import math
import random
import tarfile
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import ConfigError, DataConfig
from .bundle import DataBundle, DataError
from .decoded_shards import SquareCrops, SquareReader
from .fingerprint import summarize
from .images import UnreadableImage, image_suffixes, open_image
from .samplers import sample_seed, seeded_cpu_random
from .shard_index import RERUN, is_number_text, location, read_index, shown_root, split_count
from .stats import STATS_IMAGES, normalization_stats
from .survey import ImageSurvey
from .transforms import image_transform

# A sample as read from a shard: (its index in the split, the image file's bytes, the
# file's suffix, the class index, "shard:key" to name it in messages).
Record = tuple[int, bytes, str, int, str]


class ShardStream:
    """One split (train or val) of the shards at data.root, read as a stream of Records."""

    supports_batch_indexing = False

    def __init__(self, root: str, split: str, index: dict, survey: ImageSurvey | None) -> None:
        self.root, self.split = root, split
        self.shards = index["splits"][split]
        self.classes = index["classes"]
        self.length = split_count(index, split)
        self.survey = survey
        # Decoded shards: the settings their images were decoded with (shard_index.py).
        self.decoded: dict | None = index.get("decoded")
        self.channels = index["channels"]
        self.transform = None  # set by streamed_bundle

    def square_reader(self) -> SquareReader | None:
        """The reader of each decoded image, uint8 (C, S, S); None for shards of image files."""
        if self.decoded is None:
            return None
        return SquareReader((self.channels, self.decoded["side"], self.decoded["side"]))

    def __len__(self) -> int:
        return self.length

    def records(self, numbers: list[int]) -> Iterator[Record]:
        """The samples of the shards `numbers`, in this order, each as stored."""
        for number in numbers:
            yield from self._shard_records(self.shards[number])

    def _shard_records(self, shard: dict) -> Iterator[Record]:
        from webdataset.gopen import gopen
        from webdataset.tariterators import group_by_keys, tar_file_expander

        url = location(self.root, shard["name"])
        stream = CheckedStream(_reading(url, lambda: gopen(url, "rb")))
        finished = False
        try:
            samples = group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
            count = 0
            while (sample := _reading(url, lambda: next(samples, None))) is not None:
                count += 1
                yield self._record(sample, shard["name"])
            _reading(url, stream.read_to_end)
            finished = True
        finally:
            if finished:
                _reading(url, stream.close)  # a pipe's command that failed says so here
            else:  # stopped early: a pipe's command then ends with an error of no interest
                with contextlib.suppress(Exception):
                    stream.close()
        _check_shard(shard, url, count, stream)

    def _record(self, sample: dict, shard_name: str) -> Record:
        """A sample of webdataset's as a Record; a DataError for one that prepare_shards.py
        does not write (a key that is not an index, no class, no single image file)."""
        key = sample.get("__key__", "")
        where = f"{shard_name}:{key}"
        if self.decoded is None:
            images = [name for name in sample if f".{name}" in image_suffixes()]
        else:
            images = [name for name in sample if name == "npy"]
        label = sample.get("cls", b"").decode("ascii", "replace").strip()
        numbers = is_number_text(key) and is_number_text(label)
        if not (numbers and int(key) < self.length and len(images) == 1):
            raise DataError(
                f"the sample {where[:200]} is not one of prepare_shards.py (a key that is an "
                f"index, one {'.npy' if self.decoded else 'image'} file and its class); the "
                f"shards are damaged or of another tool; {RERUN}"
            )
        if int(label) >= len(self.classes):
            raise DataError(f"the sample {where} has class {label}, not one of the index; {RERUN}")
        return int(key), sample[images[0]], images[0], int(label), where


def _reading(url: str, step):
    """step(), with a failure to read the shard at `url` turned into one DataError."""
    try:
        return step()
    except DataError:
        raise
    except (OSError, ValueError, EOFError, tarfile.TarError) as error:
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise DataError(f"cannot read the shard {url} ({reason}); check data.root") from None


class CheckedStream:
    """A readable stream that hashes what passes through it, to compare with the index."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data

    def read_to_end(self) -> None:
        """Read what the tar reader left (the archive's padding), so the whole file is hashed."""
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        self.stream.close()


def _check_shard(shard: dict, url: str, count: int, stream: CheckedStream) -> None:
    found = (count, stream.size, stream.digest.hexdigest())
    if found != (shard["count"], shard["bytes"], shard["sha256"]):
        raise DataError(
            f"the shard {url} differs from the index ({count} samples, {stream.size} bytes, "
            f"not the {shard['count']} and {shard['bytes']} with the SHA-256 recorded): it is "
            f"damaged or was replaced; copy it again, or {RERUN}"
        )


def shard_sets(cfg: DataConfig) -> tuple[ShardStream, ShardStream, list[str], int]:
    """(train, val, classes, channels) of the shards at data.root, the training set with
    the survey of its images (as prepare_shards.py recorded it)."""
    import webdataset  # noqa: F401  (a missing package is one line before anything is read)

    if cfg.cache not in (None, False):
        raise ConfigError(
            f"data.cache={cfg.cache} does not apply to data.dataset=shards, which streams the "
            "images from their shards; set data.cache=null (or use data.dataset=imagefolder)"
        )
    if cfg.skip_bad:
        raise ConfigError(
            "data.skip_bad applies when the shards are written: python prepare_shards.py "
            "DATA_ROOT OUT --skip-bad; set data.skip_bad=false to train from them"
        )
    index = read_index(cfg.root)
    channels = cfg.channels or index["channels"]
    if index.get("decoded") and channels != index["channels"]:
        raise ConfigError(
            f"data.channels={cfg.channels}: the decoded shards at {shown_root(cfg.root)} hold "
            f"images of {index['channels']} channels; set data.channels=null, or prepare "
            "shards of the image files (prepare_shards.py without --decoded)"
        )
    survey = ImageSurvey(channels, source=f"the images of {shown_root(cfg.root)}")
    for side, count in index["survey"]["shorter_sides"].items():
        survey.shorter_sides += [int(side)] * count
    survey.photo_files = index["survey"]["photo_files"]
    smallest = index["survey"]["smallest"]
    survey.smallest = (smallest["path"], tuple(smallest["size"]))
    train = ShardStream(cfg.root, "train", index, survey)
    val = ShardStream(cfg.root, "val", index, None)
    return train, val, list(index["classes"]), channels


def streamed_bundle(
    cfg: DataConfig, train: ShardStream, val: ShardStream, classes, channels, stats_file
) -> DataBundle:
    """The DataBundle of the shards, normalised with the statistics of the first training
    images in the shards (a sample of the set: prepare_shards.py shuffled their order)."""
    first = FirstImages(train, min(len(train), STATS_IMAGES))
    if train.decoded is None:
        mean, std, source = normalization_stats(cfg, first, channels, stats_file)
        train.transform = image_transform(cfg, channels, train=True, mean=mean, std=std)
        val.transform = image_transform(cfg, channels, train=False, mean=mean, std=std)
        return DataBundle(train, val, classes, channels, mean, std, source)

    # Decoded shards: the statistics of the squares' centre crops, as for the decoded cache.
    def squares() -> torch.Tensor:
        return torch.stack([first.image(position) for position in range(len(first))])

    mean, std, source = normalization_stats(cfg, squares, channels, stats_file)
    train.transform = SquareCrops(cfg.image_size, cfg.random_crop, cfg.flip, mean, std)
    val.transform = SquareCrops(cfg.image_size, False, False, mean, std)
    return DataBundle(train, val, classes, channels, mean, std, source)


def decode(record: Record):
    """The image of a Record, decoded by open_image as an image file is."""
    _, data, _, _, where = record
    try:
        return open_image(io.BytesIO(data), shown_as=where)
    except UnreadableImage as error:
        raise DataError(
            f"{error.problem}; rerun prepare_shards.py with --skip-bad to leave unreadable "
            "images out (as data.skip_bad does for a folder)"
        ) from None


class FirstImages(Dataset):
    """The first `count` training samples in shard order, read when first indexed: what
    the normalisation statistics are computed from (stats.compute_stats)."""

    def __init__(self, stream: ShardStream, count: int) -> None:
        self.stream, self.count = stream, count
        self.transform = None
        self._records: list[Record] | None = None
        self.read_square = stream.square_reader()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, position: int):
        return self.transform(self.image(position)), self._records[position][3]

    def image(self, position: int):
        """The `position`-th image, decoded (a PIL image, or a decoded shard's square)."""
        if self._records is None:
            everything = self.stream.records(list(range(len(self.stream.shards))))
            self._records = list(itertools.islice(everything, self.count))
            everything.close()
        _, data, _, _, where = record = self._records[position]
        if self.read_square is not None:
            return self.read_square(data, where)
        return decode(record)


class DecodedSamples(Dataset):
    """The DataLoader's dataset: each "index" is (epoch, Record) from ShardBatches, decoded
    and transformed here (in a worker); training samples are augmented with the seed of
    (seed, epoch, index) that SeededAugmentation gives the same image of a folder. Decoded
    shards' samples are read and cropped a batch at a time (__getitems__, SquareCrops)."""

    def __init__(self, stream: ShardStream, seed: int | None) -> None:
        self.transform, self.seed = stream.transform, seed
        self.read_square = stream.square_reader()

    def __getitem__(self, item: tuple[int | None, Record]):
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[tuple[int | None, Record]]) -> list:
        seeds = [self._seed(epoch, record) for epoch, record in items]
        labels = [record[3] for _, record in items]
        if self.read_square is not None:
            squares = torch.stack([self.read_square(record[1], record[4]) for _, record in items])
            return list(zip(self.transform(squares, seeds).unbind(0), labels, strict=True))
        samples = []
        for seed, (_, record), label in zip(seeds, items, labels, strict=True):
            if seed is None:
                samples.append((self.transform(decode(record)), label))
                continue
            with seeded_cpu_random(seed):
                samples.append((self.transform(decode(record)), label))
        return samples

    def _seed(self, epoch: int | None, record: Record) -> int | None:
        if epoch is None or self.seed is None:
            return None
        return sample_seed(self.seed, epoch, record[0])


class ShardBatches:
    """The batches of one process's stream of shards, as lists of (epoch, Record): the
    batch sampler of shard_loader's DataLoader (see the module for the order).

    `set_epoch(epoch, start_batch)` positions it as EpochBatchSampler does: the samples of
    the first `start_batch` batches are read past, not decoded.
    """

    def __init__(
        self, stream: ShardStream, cfg: DataConfig, train: bool, seed: int, rank: int, world: int
    ) -> None:
        self.stream, self.train, self.seed = stream, train, seed
        self.rank, self.world_size = rank, world
        self.batch_size, self.buffer = cfg.batch_size, cfg.shuffle_buffer
        self.epoch, self.start_batch = 0, 0
        shards = len(stream.shards)
        if train and shards < world:
            raise ConfigError(
                f"the {shards} training shards at data.root={shown_root(stream.root)} cannot "
                f"give each of the {world} processes its own; prepare them again with more "
                "shards (python prepare_shards.py ... --per-shard N with a smaller N)"
            )
        if train:
            self.length = math.ceil(len(stream) / world)
        else:
            self.length = sum(shard["count"] for shard in stream.shards[rank::world])
        # As for folders: drop a ragged last batch when training, unless it is the only one.
        self.drop_last = train and self.length > self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.length // self.batch_size
        return math.ceil(self.length / self.batch_size)

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start_batch, 0)

    def shard_order(self, epoch: int) -> list[int]:
        """This process's training shards in `epoch`, in the order it reads them."""
        order = list(range(len(self.stream.shards)))
        random.Random(f"{self.seed}/{epoch}/shards").shuffle(order)
        return order[self.rank :: self.world_size]

    def epoch_records(self, epoch: int) -> Iterator[Record]:
        """This process's samples of `epoch`, exactly `self.length` of them."""
        if not self.train:
            numbers = list(range(len(self.stream.shards)))[self.rank :: self.world_size]
            yield from self.stream.records(numbers)
            return
        passes = self._shuffled_passes(epoch)
        try:
            yield from itertools.islice(passes, self.length)
        finally:
            passes.close()  # the shard being read is closed now, not when collected

    def _shuffled_passes(self, epoch: int) -> Iterator[Record]:
        from webdataset import shuffle

        shards = self.shard_order(epoch)
        for repeat in itertools.count():  # a second pass only where the shards hold too few
            rng = random.Random(f"{self.seed}/{epoch}/{self.rank}/{repeat}")
            yield from shuffle(self.buffer, self.buffer, rng=rng)(self.stream.records(shards))

    def __iter__(self) -> Iterator[list]:
        records = self.epoch_records(self.epoch)
        tag = self.epoch if self.train else None
        try:
            # Read past the batches trained on before a resume: bytes only, nothing decoded.
            collections.deque(itertools.islice(records, self.start_batch * self.batch_size), 0)
            for _ in range(len(self)):
                batch = [(tag, record) for record in itertools.islice(records, self.batch_size)]
                if not batch:
                    return
                yield batch
        finally:
            records.close()


def shard_loader(
    stream: ShardStream,
    cfg: DataConfig,
    *,
    train: bool,
    seed: int,
    rank: int,
    world_size: int,
    **options,
) -> DataLoader:
    """The DataLoader of this process's batches of `stream` (build_loader's, for shards)."""
    batches = ShardBatches(stream, cfg, train, seed, rank, world_size)
    samples = DecodedSamples(stream, seed if train else None)
    return DataLoader(samples, batch_sampler=batches, **options)


def shards_fingerprint(root: str) -> dict:
    """The fingerprint (fingerprint.py) of the shards at `root`: from their index alone,
    without reading a shard; any shard written again changes it (its SHA-256 is in it)."""
    index = read_index(root)
    shards = [shard for split in ("train", "val") for shard in index["splits"][split]]
    summary = summarize({shard["name"]: shard["bytes"] for shard in shards})
    checksums = "".join(f"{shard['name']}\t{shard['sha256']}\n" for shard in shards)
    summary["sha256"] = hashlib.sha256(checksums.encode()).hexdigest()
    return {"dataset": "shards", "root": root, **summary}
