"""The decoded-image cache on disk (data.cache=disk): for image collections that do not fit
in memory. Each image is decoded once, as the memory cache decodes it (cache.py's
decoded_samples: EXIF applied by open_image, resized, cropped to the stored square), into
one uint8 file per set (train, val) read back memory-mapped, and served by the memory
cache's own batch path (CachedImages): a batch is one gather from the mapped file.

The cache lives in a folder per data source (cache_place.py) and is used again by later
runs while its key is unchanged: the data's fingerprint (fingerprint.py), every sample's
path, label, size and modification time (the fingerprint alone misses an image edited in
place at the same size), and the settings that shape the stored squares (side, crop,
resize, interpolation, channels, data.skip_bad). Otherwise it is built again, replacing
the old one.

A build is atomic: it writes into a temporary folder beside the cache, the manifest last,
then renames the folder into place. A killed build leaves only that temporary folder,
which nothing reads and the next build removes. Runs that build the same cache at once
take turns on a file lock (flock, released by the kernel when its holder dies); the second
finds the first's cache ready. The memory maps of a run stay valid if a later run replaces
the folder (POSIX keeps an unlinked file's pages while they are mapped).
"""

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import Config, ConfigError, DataConfig
from ..device import copy_to
from ..files import RECORD_LIMIT, atomic_write_text, read_small_json
from .bundle import DataBundle
from .cache import CachedImages, decoded_samples
from .cache_place import (
    cache_root,
    check_room,
    free_space,
    megabytes,
    no_room_message,
    source_folder,
)
from .fingerprint import fingerprint
from .folders import ImageFiles
from .images import shown
from .skip_bad import report_left_out
from .stats import normalization_stats
from .transforms import resize_side

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

logger = logging.getLogger(__name__.split(".")[0])

# Bumped when the files' layout changes: an older cache is then built again.
CACHE_FORMAT = 1
MANIFEST = "manifest.json"
SETS = ("train", "val")
WHAT = {"train": "training", "val": "validation"}


class DiskCachedImages(CachedImages):
    """CachedImages whose images stay memory-mapped on the host: each batch is gathered
    there (only its pages are read) and copied to the training device, instead of the
    whole set being moved there as the memory cache is."""

    def to(self, device: torch.device) -> "DiskCachedImages":
        device = torch.device(device)
        self.labels = self.labels.to(device)
        self._statistics_on(device)
        return self

    def squares(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu()
        return copy_to(self.images[index], self._mean.device)

    def crops(self, indices: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor):
        return copy_to(super().crops(indices.cpu(), tops, lefts), self._mean.device)


def disk_cached_bundle(
    cfg: DataConfig,
    train: Dataset,
    val: Dataset,
    classes: list[str],
    channels: int,
    stats_file: Path | None,
) -> DataBundle:
    """data.cache=disk: both sets from the cache on disk, built first where it is missing
    or stale."""
    side = resize_side(cfg) or cfg.image_size
    root = cache_root(cfg)
    folder = source_folder(cfg, root)
    key = cache_key(cfg, {"train": train, "val": val}, channels, side)
    manifest = valid_manifest(folder, key)
    if manifest is not None and not os.access(root, os.W_OK):
        # A ready cache where this run may not write (a read-only disk): nothing to build,
        # so nothing to lock; a complete cache is never changed in place.
        sets = {name: open_set(folder, name, manifest, len(classes)) for name in SETS}
    else:
        if manifest is None:  # the room, before anything is written
            check_room((len(train) + len(val)) * channels * side * side, root, folder)
        with build_lock(root, folder):
            manifest = valid_manifest(folder, key)
            if manifest is None:
                manifest = build_cache(folder, key, cfg, {"train": train, "val": val})
            else:
                logger.info("data.cache=disk: the decoded images in %s are up to date", folder)
            sets = {name: open_set(folder, name, manifest, len(classes)) for name in SETS}
    for name, dataset in (("train", train), ("val", val)):
        report_left_out(manifest["sets"][name]["left_out"], len(dataset), WHAT[name])
    (train_images, train_labels), (val_images, val_labels) = sets["train"], sets["val"]
    mean, std, source = normalization_stats(cfg, train_images, channels, stats_file)
    cached = [
        DiskCachedImages(images, labels, classes, cfg.image_size, mean, std)
        for images, labels in ((train_images, train_labels), (val_images, val_labels))
    ]
    return DataBundle(*cached, classes, channels, mean, std, source, cached="disk")


def cache_key(cfg: DataConfig, sets: dict[str, Dataset], channels: int, side: int) -> dict:
    """What the stored images depend on; the cache is used only where all of it matches."""
    settings = {
        "side": side,
        "crop": cfg.image_size,
        "resize": resize_side(cfg),
        "interpolation": cfg.interpolation or "bilinear",
        "channels": channels,
        "skip_bad": cfg.skip_bad,
    }
    return {
        "format": CACHE_FORMAT,
        "settings": settings,
        "data": fingerprint(Config(data=cfg))["sha256"],
        "samples": {name: samples_digest(dataset) for name, dataset in sets.items()},
    }


def samples_digest(dataset: Dataset) -> str:
    """SHA-256 of a set's samples in order: for image files each one's path, label, size,
    modification and status-change times; for a torchvision dataset (whose files the
    fingerprint covers) its kind and length."""
    digest = hashlib.sha256()
    if not isinstance(dataset, ImageFiles):
        digest.update(f"{type(dataset).__name__}\t{len(dataset)}".encode())
        return digest.hexdigest()
    for path, label in dataset.samples:
        try:
            status = os.stat(path)
            # ctime too: a file replaced with its size and modification time kept (cp -p,
            # rsync -a, an archive's fixed times) still changes it.
            state = f"{status.st_size}\t{status.st_mtime_ns}\t{status.st_ctime_ns}"
        except OSError:  # gone: no cache matches, and the build names the file
            state = "missing"
        digest.update(os.fsencode(path) + f"\t{label}\t{state}\n".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def build_lock(root: Path, folder: Path):
    """Hold the lock of the cache in `folder` (a file beside it): one process builds or
    checks it at a time; the others wait for it."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f".{folder.name}.lock", "a+b")  # closed by the with below
    except OSError as error:
        if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise ConfigError(
            f"data.cache=disk cannot write in {root} ({error.strerror}); set "
            "data.cache_dir=FOLDER where this run may write, or data.cache=false"
        ) from None
    with lock:
        if fcntl is None:
            logger.warning("data.cache=disk: no file lock on this system: build it in one run")
        else:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("data.cache=disk: waiting for another run building %s", folder)
                fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def valid_manifest(folder: Path, key: dict) -> dict | None:
    """The manifest of the cache in `folder` where it matches `key` and its files have the
    sizes it declares (a copied or damaged cache is built again, never read past its end);
    None otherwise."""
    try:
        manifest = read_small_json(folder / MANIFEST, RECORD_LIMIT, "a cache manifest")
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in key.items()):
        return None
    sets = manifest.get("sets")
    if not isinstance(sets, dict) or set(sets) != set(SETS):
        return None
    pixels = key["settings"]["channels"] * key["settings"]["side"] ** 2
    for name, record in sets.items():
        count = record.get("images") if isinstance(record, dict) else None
        left_out = record.get("left_out") if isinstance(record, dict) else None
        if not isinstance(count, int) or count < 0 or not isinstance(left_out, list):
            return None
        if not all(isinstance(line, str) for line in left_out):
            return None
        if _size(folder / f"{name}.images") != count * pixels:
            return None
        if _size(folder / f"{name}.labels") != count * 8:
            return None
    return manifest


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() and not path.is_symlink() else None
    except OSError:
        return None


def open_set(
    folder: Path, name: str, manifest: dict, classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [N, C, S, S] memory-mapped, labels [N]) of the set `name`, whose
    labels must be below `classes`."""
    settings, count = manifest["settings"], manifest["sets"][name]["images"]
    shape = (count, settings["channels"], settings["side"], settings["side"])
    labels = torch.from_numpy(np.fromfile(folder / f"{name}.labels", dtype=np.int64))
    if count and not bool(((labels >= 0) & (labels < classes)).all()):
        raise ConfigError(
            f"the cache in {shown(str(folder))} holds labels of classes the data does not "
            "have; delete that folder to build it again"
        )
    if count == 0:  # a file of no bytes cannot be mapped
        return torch.empty(shape, dtype=torch.uint8), labels
    # Copy-on-write: the tensor may be written (it never is) without touching the file.
    images = np.memmap(folder / f"{name}.images", dtype=np.uint8, mode="c", shape=shape)
    return torch.from_numpy(images), labels


def build_cache(folder: Path, key: dict, cfg: DataConfig, sets: dict[str, Dataset]) -> dict:
    """Decode both sets into a new cache, moved into `folder` when whole; its manifest."""
    settings, root = key["settings"], folder.parent
    each = settings["channels"] * settings["side"] ** 2
    size = sum(len(dataset) for dataset in sets.values()) * each
    logger.info(
        "data.cache=disk: decoding %d train + %d val images into %s, %s (%dx%dx%d each)",
        len(sets["train"]),
        len(sets["val"]),
        folder,
        megabytes(size),
        settings["channels"],
        settings["side"],
        settings["side"],
    )
    _remove_leftovers(root, folder.name)
    # The stale cache goes first (this process holds the lock): the new one needs its room,
    # not room beside it.
    shutil.rmtree(folder, ignore_errors=True)
    check_room(size, root, folder)
    building = root / f".{folder.name}.building-{os.getpid()}"
    started = time.perf_counter()
    try:
        building.mkdir()
        records = write_sets(building, cfg, sets, settings)
        manifest = {**key, "sets": records}
        atomic_write_text(building / MANIFEST, _json(manifest))  # last: the cache is whole
        _put_in_place(building, folder)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ConfigError(no_room_message(size, free_space(root), root)) from None
        raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    logger.info("data.cache=disk: built in %.1f s", time.perf_counter() - started)
    return manifest


def write_sets(building: Path, cfg: DataConfig, sets: dict[str, Dataset], settings) -> dict:
    """Each set's images and labels into `building`, decoded in worker processes with a
    progress bar; {set: {"images": count, "left_out": warnings}}."""
    from tqdm import tqdm

    channels, side = settings["channels"], settings["side"]
    total = sum(len(dataset) for dataset in sets.values())
    records = {}
    with tqdm(total=total, desc="data.cache=disk", unit=" images", disable=None) as bar:
        for name, dataset in sets.items():
            left_out: list[str] = []
            labels = []
            with open(building / f"{name}.images", "wb") as file:
                _reserve(file, len(dataset) * channels * side * side)
                samples = decoded_samples(
                    dataset, cfg, channels, side, left_out, build_workers(cfg)
                )
                for pixels, label in samples:
                    file.write(pixels.contiguous().numpy().tobytes())
                    labels.append(label)
                    bar.update()
                bar.update(len(left_out))
                file.truncate(file.tell())  # the room reserved for images left out
                os.fsync(file.fileno())
            with open(building / f"{name}.labels", "wb") as file:
                file.write(np.asarray(labels, dtype=np.int64).tobytes())
                os.fsync(file.fileno())
            records[name] = {"images": len(labels), "left_out": left_out}
    return records


def build_workers(cfg: DataConfig) -> int:
    """Decoding processes for a build: data.num_workers, or every core this process may use
    where that is 0 (a build decodes every image at once: worth the cores training leaves
    to the main process)."""
    if cfg.num_workers:
        return cfg.num_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores if (cores or 1) > 1 else 0


def _reserve(file, size: int) -> None:
    """Claim `size` bytes at once where the filesystem can (ENOSPC now, not half-way)."""
    if size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(file.fileno(), 0, size)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            # EOPNOTSUPP and the like: the writes will tell


def _remove_leftovers(root: Path, name: str) -> None:
    """Temporary folders of builds that were killed (only the lock's holder builds)."""
    for pattern in (f".{name}.building-*", f".{name}.old-*"):
        for leftover in root.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _put_in_place(building: Path, folder: Path) -> None:
    """Rename the finished `building` to `folder`, moving an old cache aside first (a
    folder cannot be renamed over another that has files)."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(building, folder)
    descriptor = os.open(folder.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the rename itself durable
    finally:
        os.close(descriptor)
    shutil.rmtree(old, ignore_errors=True)


def _json(manifest: dict) -> str:
    return json.dumps(manifest, indent=1) + "\n"
