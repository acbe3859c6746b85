"""Where data.cache=disk keeps the decoded images, and whether they fit there.

The folder is data.cache_dir, or cache/ beside runs/ (the run root), one subfolder per data
source. It is never inside data.root: an image folder's scan would take it for a class, and
the user's data folder is theirs, not the project's. The space is checked before anything
is written: the cache needs its size plus DISK_MARGIN free; the automatic choice
(data.cache=null, cache.py) takes the disk only for at most DISK_SHARE of the free space,
leaving room for checkpoints and other work.
"""

import hashlib
import os
import shutil
from pathlib import Path

from ..config import ConfigError, DataConfig
from ..runs import RUNS
from .images import shown

# The share of the free disk space that an automatic data.cache=disk may fill.
DISK_SHARE = 0.5
# Bytes left free beyond the cache itself when data.cache=disk is asked for.
DISK_MARGIN = 64 << 20


def cache_root(cfg: DataConfig) -> Path:
    """data.cache_dir, or cache/ beside runs/; ConfigError where it is inside data.root."""
    root = Path(cfg.cache_dir) if cfg.cache_dir else RUNS.parent / "cache"
    problem = inside_data_problem(cfg, root)
    if problem:
        raise ConfigError(problem)
    return root


def inside_data_problem(cfg: DataConfig, root: Path) -> str:
    """The one line refusing a cache folder inside data.root, or ""."""
    data = Path(cfg.root).resolve()
    if not root.resolve().is_relative_to(data):
        return ""
    given = f"data.cache_dir={shown(str(root))}" if cfg.cache_dir else f"the default {root}/"
    return (
        f"{given} is inside data.root={shown(cfg.root)}: the cache's files would be mixed "
        "with the images; set data.cache_dir to a folder outside it"
    )


def source_folder(cfg: DataConfig, root: Path) -> Path:
    """The subfolder of `root` for this data source (dataset and data.root): one cache per
    source, replaced when the data or the settings change, so old caches do not pile up."""
    where = os.fsencode(str(Path(cfg.root).resolve()))
    return root / f"{cfg.dataset}-{hashlib.sha256(where).hexdigest()[:16]}"


def free_space(folder: Path) -> int:
    """Free bytes on the filesystem that holds `folder` (or would hold it, once made)."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def folder_size(folder: Path) -> int:
    """Bytes of the files directly in `folder` (0 if there is none): a cache about to be
    replaced gives its space back."""
    try:
        with os.scandir(folder) as entries:
            return sum(entry.stat().st_size for entry in entries if entry.is_file())
    except OSError:
        return 0


def no_room_message(size: int, free: int, root: Path) -> str:
    """The one line of a disk too full for the cache, with both fixes."""
    return (
        f"data.cache=disk needs {megabytes(size + DISK_MARGIN)} in {shown(str(root))} (the "
        f"decoded images and {megabytes(DISK_MARGIN)} to spare), but {megabytes(free)} "
        "are free there; set data.cache_dir=FOLDER on a disk with room, or data.cache=false"
    )


def reclaimable(root: Path, folder: Path) -> int:
    """Bytes a build frees before it writes: the stale cache in `folder` it replaces, and
    the half-built folders of killed builds of it."""
    leftovers = root.glob(f".{folder.name}.building-*") if root.is_dir() else []
    return folder_size(folder) + sum(folder_size(path) for path in leftovers)


def check_room(size: int, root: Path, folder: Path) -> None:
    """ConfigError before anything is written, where `size` bytes do not fit in `root`
    (the stale cache in `folder` and killed builds' leftovers count as free)."""
    free = free_space(root) + reclaimable(root, folder)
    if size + DISK_MARGIN > free:
        raise ConfigError(no_room_message(size, free, root))


def disk_choice(cfg: DataConfig, size: int) -> tuple[bool, str]:
    """For the automatic data.cache: whether `size` bytes of decoded images go on disk, and
    why, in words for the auto: line."""
    root = Path(cfg.cache_dir) if cfg.cache_dir else RUNS.parent / "cache"
    problem = inside_data_problem(cfg, root)
    if problem and cfg.cache_dir:
        raise ConfigError(problem)
    if problem:
        return False, f"the default {root}/ is inside data.root (set data.cache_dir)"
    free = free_space(root) + reclaimable(root, source_folder(cfg, root))
    fits = size <= DISK_SHARE * free
    words = "at most" if fits else "more than"
    return fits, f"on disk they take {words} half the {megabytes(free)} free in {root}"


def megabytes(size: int) -> str:
    return f"{size / 2**20:,.1f} MB"
