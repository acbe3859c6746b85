"""prepare_shards.py's work: an image folder written as tar shards in the WebDataset layout,
with their index (shard_index.py), for training from wherever the shards are copied to.

The images are listed exactly as training lists a folder (folders.image_folder: the same
class map, skip rules, train/val layout or seeded split by data.val_fraction and
data.split_seed, and with skip_bad the same images left out), so that a run on the shards
trains on the samples a run on the folder would. Each image goes in as its file's bytes,
never re-encoded: decoding (EXIF orientation, 16-bit scaling) happens at training, by the
same open_image as for files. With a Decoding (prepare_shards.py --decoded N), each goes in
decoded instead, as the decoded-image cache stores it (cache.decoded_samples: the square of
uint8 pixels that the crops for data.image_size=N are taken from, as KEY.npy): larger
shards, and nothing left to decode at training.

The training images are written in an order shuffled once (from data.split_seed), so that
every shard holds every class in its share: the shuffle buffer of training mixes only
nearby samples, and the first shards serve the normalisation statistics.

Atomic: each shard is written to a temporary file and renamed into place, the index last;
an index from an earlier write is removed first, so a killed write leaves tar files
without shards.json, which training refuses in one line. Only files of this layout are
ever replaced or removed.
"""

import io
import itertools
import json
import logging
import os
import random
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig
from ..files import atomic_path, atomic_write_text, file_sha256
from ..log import progress_bar
from .bundle import DataError
from .cache import decoded_samples
from .decoded_shards import npy_size
from .folders import ImageFiles, image_folder
from .images import shown
from .shard_index import (
    FORMAT,
    MAX_DECODED_SIDE,
    SHARD_NAME,
    SHARDS_FILE,
    TEMPORARY_NAME,
    VERSION,
    WRITING_MARK,
    decoded_side,
    is_shard_folder_entry,
    shard_name,
    size_words,
)
from .skip_bad import leave_out_undecodable
from .survey import ImageSurvey

logger = logging.getLogger(__name__.split(".")[0])

# What a sample adds to a tar file beyond its image's bytes: two 512-byte headers, the
# class file's block, and the padding of the image to a whole block (on average).
TAR_OVERHEAD = 3 * 512 + 256


@dataclass
class ShardPlan:
    """How to cut the sets into shards: at most `per_shard` samples each, or (when None)
    about `shard_bytes` bytes each (never less than one sample)."""

    per_shard: int | None = None
    shard_bytes: int = 256_000_000

    def cut(self, sizes: list[int]) -> list[range]:
        """The ranges of sample positions, one per shard, of samples of these sizes."""
        if self.per_shard is not None:
            step = self.per_shard
            return [
                range(start, min(start + step, len(sizes))) for start in range(0, len(sizes), step)
            ]
        cuts, start, filled = [], 0, 0
        for position, size in enumerate(sizes):
            if position > start and filled + size + TAR_OVERHEAD > self.shard_bytes:
                cuts.append(range(start, position))
                start, filled = position, 0
            filled += size + TAR_OVERHEAD
        return [*cuts, range(start, len(sizes))]


# The worker processes that decode images for prepare_shards.py.
WORKERS = min(os.cpu_count() or 1, 8)


@dataclass
class Decoding:
    """prepare_shards.py --decoded: each image stored decoded for data.image_size=
    `image_size` (with data.resize and data.interpolation; resize null for its default), as
    a square of side() pixels of the images' channels, the way the decoded cache stores it."""

    image_size: int
    resize: int | None = None
    interpolation: str = "bilinear"

    def settings(self, channels: int) -> DataConfig:
        """The data settings the images are decoded with (cache.decoded_samples reads them)."""
        return DataConfig(
            dataset="imagefolder",
            image_size=self.image_size,
            resize=self.resize,
            interpolation=self.interpolation,
            channels=channels,
            num_workers=WORKERS,
        )

    def side(self) -> int:
        return decoded_side(self.image_size, self.resize)

    def record(self) -> dict:
        """The index's "decoded" entry."""
        return {
            "image_size": self.image_size,
            "resize": self.resize,
            "interpolation": self.interpolation,
            "side": self.side(),
        }

    def check(self) -> None:
        """One DataError for settings whose squares could not be cropped or are too large."""
        size, side = self.image_size, self.side()
        if side < size:
            raise DataError(
                f"--resize {self.resize} is smaller than --decoded {size}: the crops would not "
                "fit in the resized images; give a larger --resize, or none"
            )
        if side > MAX_DECODED_SIDE:
            raise DataError(
                f"--decoded {size} with --resize {self.resize} makes squares of {side} px, more "
                f"than the {MAX_DECODED_SIDE} px decoded shards hold; give a smaller size, or "
                "write shards of the image files (without --decoded)"
            )

    def check_images(self, survey: ImageSurvey, channels: int, count: int) -> None:
        """With --resize 0 (no resize), every image must hold the crop; the size of the
        `count` decoded images is logged."""
        path, size = survey.smallest
        if self.resize == 0 and survey.shorter_sides and min(size) < self.image_size:
            raise DataError(
                f"{shown(path)} is {size[0]}x{size[1]} pixels, smaller than --decoded "
                f"{self.image_size} with --resize 0 (no resize); leave out --resize 0 to "
                "scale images first, or give a smaller --decoded"
            )
        each = self.sample_bytes(channels)
        logger.info(
            "decoded shards: %s a sample, about %s in all",
            size_words(each),
            size_words(each * count),
        )

    def sample_bytes(self, channels: int) -> int:
        """The size of each image's .npy file in the shards."""
        return npy_size((channels, self.side(), self.side()))

    def payloads(
        self, dataset: ImageFiles, indices: list[int], channels: int
    ) -> Iterator[tuple[str, bytes]]:
        """("npy", the .npy file of uint8 [C, side, side]) of each image of `indices`,
        decoded in parallel by one set of worker processes."""
        import numpy

        subset = ImageFiles([dataset.samples[index] for index in indices], dataset.classes)
        cfg = self.settings(channels)
        for pixels, _ in decoded_samples(subset, cfg, channels, self.side(), left_out=[]):
            buffer = io.BytesIO()
            numpy.save(buffer, pixels.numpy(), allow_pickle=False)
            yield "npy", buffer.getvalue()


def prepare_shards(
    data: DataConfig, out: Path, plan: ShardPlan, decoding: Decoding | None = None
) -> dict:
    """Write the image folder `data.root` (listed as training lists it) as shards into
    `out`, their index last; returns the index. Each image as its file's bytes, or with
    `decoding`, decoded."""
    root = Path(data.root)
    if decoding is not None:
        decoding.check()
    check_destination(root, out)
    train, val, classes, channels = image_folder(data)
    if decoding is not None:
        decoding.check_images(train.survey, channels, len(train) + len(val))
    if data.skip_bad:  # what training on the folder leaves out with data.skip_bad
        leave_out_undecodable(train, WORKERS, "training")
        leave_out_undecodable(val, WORKERS, "validation")
    out.mkdir(parents=True, exist_ok=True)
    (out / WRITING_MARK).write_text("python prepare_shards.py is writing here\n", encoding="utf-8")
    # An index from an earlier write would vouch for shards being replaced now.
    (out / SHARDS_FILE).unlink(missing_ok=True)
    order = list(range(len(train)))
    random.Random(f"{data.split_seed}/shards").shuffle(order)
    total = len(train) + len(val)
    progress = progress_bar(total, 0, "writing shards", enabled=sys.stdout.isatty())
    try:
        splits = {
            "train": _write_split(train, order, "train", out, plan, progress, decoding, channels),
            "val": _write_split(
                val, list(range(len(val))), "val", out, plan, progress, decoding, channels
            ),
        }
    finally:
        progress.close()
    index = {
        "format": FORMAT,
        # Shards of files keep the first version, which projects before decoded shards read.
        "version": VERSION if decoding is not None else 1,
        "classes": classes,
        "channels": channels,
        "survey": _survey_record(train.survey, root),
        "validation": _validation_rule(data, root),
        "splits": splits,
    }
    if decoding is not None:
        index["decoded"] = decoding.record()
    atomic_write_text(out / SHARDS_FILE, json.dumps(index, indent=1) + "\n")
    _remove_leftovers(out, {shard["name"] for shards in splits.values() for shard in shards})
    (out / WRITING_MARK).unlink()
    written = sum(shard["bytes"] for shards in splits.values() for shard in shards)
    logger.info(
        "wrote %d train / %d val images of %d classes as %d + %d shards (%s) to %s",
        len(train),
        len(val),
        len(classes),
        len(splits["train"]),
        len(splits["val"]),
        size_words(written),
        shown(out),
    )
    return index


def check_destination(root: Path, out: Path) -> None:
    """`out` may receive shards: not the data folder nor inside it (the shards would be read
    as a class of images), not a file, and holding nothing but an earlier write's shards."""
    data, target = root.resolve(), out.resolve()
    if target == data or data in target.parents:
        raise DataError(
            f"OUT {shown(out)} is inside DATA_ROOT {shown(root)}, where training would list "
            "the shards' folder as a class; choose a folder outside DATA_ROOT"
        )
    if out.exists() and not out.is_dir():
        raise DataError(f"OUT {shown(out)} is a file; name a new or empty folder")
    if not out.is_dir():
        return
    foreign = sorted(entry.name for entry in out.iterdir() if not is_shard_folder_entry(entry.name))
    if foreign:
        raise DataError(
            f"OUT {shown(out)} holds {shown(foreign[0])}, which prepare_shards.py did not "
            f"write ({len(foreign)} such entr{'y' if len(foreign) == 1 else 'ies'}); name a "
            "new or empty folder, or one of earlier shards to replace"
        )
    names = {entry.name for entry in out.iterdir()}
    shards = sorted(name for name in names if SHARD_NAME.fullmatch(name))
    if shards and not names & {SHARDS_FILE, WRITING_MARK}:
        raise DataError(
            f"OUT {shown(out)} holds {shards[0]} but no {SHARDS_FILE}: shards of another tool, "
            "which prepare_shards.py does not replace; name a new or empty folder"
        )


def _write_split(
    dataset: ImageFiles,
    order: list[int],
    split: str,
    out: Path,
    plan: ShardPlan,
    progress,
    decoding: Decoding | None,
    channels: int,
) -> list[dict]:
    """Write the samples of `dataset` in `order` as shards of `split`; their index entries."""
    if decoding is None:
        sizes = [dataset.samples[index][0].stat().st_size for index in order]
        payloads = _file_payloads(dataset, order)
    else:
        sizes = [decoding.sample_bytes(channels)] * len(order)
        payloads = decoding.payloads(dataset, order, channels)
    shards = []
    for number, positions in enumerate(plan.cut(sizes)):
        name = shard_name(split, number)
        indices = [order[position] for position in positions]
        shard_payloads = itertools.islice(payloads, len(indices))  # the split's, in order
        shards.append(_write_shard(dataset, indices, shard_payloads, out / name))
        progress.update(len(indices))
    return shards


def _file_payloads(dataset: ImageFiles, indices: list[int]) -> Iterator[tuple[str, bytes]]:
    """(the file's suffix, its bytes) of each image of `indices`."""
    for index in indices:
        image, _ = dataset.samples[index]
        yield image.suffix.lower().lstrip("."), image.read_bytes()


def _write_shard(
    dataset: ImageFiles, indices: list[int], payloads: Iterator[tuple[str, bytes]], path: Path
) -> dict:
    """One tar file of the samples `indices` (KEY.<suffix>: the payload, the image file's
    bytes or its decoded pixels; KEY.cls: the class index; KEY: the sample's index in its
    split), written atomically."""
    from webdataset import TarWriter

    with atomic_path(path) as temporary:
        with open(temporary, "wb") as file, TarWriter(file, encoder=False, mtime=0) as writer:
            for index, (suffix, payload) in zip(indices, payloads, strict=True):
                sample = {"__key__": f"{index:09d}", suffix: payload}
                sample["cls"] = str(dataset.samples[index][1]).encode("ascii")
                writer.write(sample)
        record = {"name": path.name, "count": len(indices)}
        record.update(bytes=temporary.stat().st_size, sha256=file_sha256(temporary))
    return record


def _survey_record(survey: ImageSurvey, root: Path) -> dict:
    """What survey.py needs of the training images, to choose without reading a shard."""
    path, size = survey.smallest
    sides = sorted(Counter(survey.shorter_sides).items())
    return {
        "shorter_sides": {str(side): count for side, count in sides},
        "photo_files": survey.photo_files,
        "smallest": {"path": shown(os.path.relpath(path, root)) if path else "", "size": [*size]},
    }


def _validation_rule(data: DataConfig, root: Path) -> str:
    if (root / "val").is_dir():
        return "the val/ folder"
    return f"data.val_fraction={data.val_fraction} of each class, data.split_seed={data.split_seed}"


def _remove_leftovers(out: Path, written: set[str]) -> None:
    """Remove the shards of an earlier write that this one did not replace, and the
    temporary files of killed writes."""
    for entry in out.iterdir():
        leftover = TEMPORARY_NAME.fullmatch(entry.name) or (
            is_shard_folder_entry(entry.name)
            and entry.name not in written | {SHARDS_FILE, WRITING_MARK}
        )
        if leftover and entry.is_file() and not entry.is_symlink():
            entry.unlink()
