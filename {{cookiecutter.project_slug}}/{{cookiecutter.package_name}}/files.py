"""Files that must survive a kill: written atomically, and checksummed to verify later.

The rule for writing, in this one place: write to a temporary file in the same folder (a
rename from another filesystem, such as $TMPDIR, is not atomic), flush it to disk, rename it
over the target with `os.replace`, then flush the folder, which makes the rename itself
durable. A kill at any instant then leaves either the old file or the new one. (Checkpoints
written with a plain `torch.save` were found unloadable after a kill 9 times in 15.)
A set of files that belong together (export.py's, evaluate.py's) is made in a staging
folder and moved into place at once (`staged_files`): whole, or not at all.
A SHA-256 "sidecar" beside a file, in the format of `sha256sum`, catches damage later:
neither torch's zip format nor safetensors checks tensor bytes when loading.
"""

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from .stopping import placing

# What `atomic_path` names its temporary files: a kill mid-write leaves one to delete later.
TEMPORARY_FILES = ".*.tmp"
# The largest JSON record `read_record` reads (an export card with its config and class
# names is far smaller).
RECORD_LIMIT = 64 << 20


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path` to write the new content to; when the block
    ends, it replaces `path` durably.

    On any failure (including a full disk, which torch reports as RuntimeError) the
    temporary file is removed and `path` is left exactly as it was.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        if not temporary.is_symlink():  # a link has no content of its own to flush
            with open(temporary, "rb+") as file:
                os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename == str(temporary):
            # Name the user's file, not our temporary one (nor the rename between them).
            error.filename, error.filename2 = str(path), None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through `atomic_path`."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def atomic_symlink(link: Path, target: str, target_is_directory: bool = False) -> None:
    """Make `link` a symbolic link to `target` (relative to the folder of `link`), switched
    in one rename, so that `link` never disappears; OSError where the filesystem has no
    symbolic links."""
    with atomic_path(link) as temporary:
        temporary.unlink(missing_ok=True)  # left by a killed process that had our id
        temporary.symlink_to(target, target_is_directory=target_is_directory)


@contextlib.contextmanager
def staged_files(folder: Path, retire: Iterable[str] = ()) -> Iterator[Path]:
    """Write a set of files together: yield an empty staging folder inside `folder` (made
    if missing) to write them to. When the block ends, each moves into `folder` under its
    own name, replacing its namesake, and the names in `retire` (files of an earlier set
    that this one does not have) are removed.

    The moves run with signals held back (stopping.placing), so the set appears whole; on
    any failure before them, a signal included, the staging folder is removed, and so is
    `folder` where it was made for the set: nothing appears at all.
    """
    made = [path for path in (folder, *folder.parents) if not os.path.lexists(path)]
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".staging.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed process that had our id
    try:
        staging.mkdir()
        yield staging
        names = sorted(path.name for path in staging.iterdir())
        with placing(folder / name for name in names):
            for name in names:
                os.replace(staging / name, folder / name)
            for name in set(retire) - set(names):
                (folder / name).unlink(missing_ok=True)
            staging.rmdir()
            _fsync_folder(folder)
    except BaseException:
        with placing():  # a second signal must not cut the clean-up short
            shutil.rmtree(staging, ignore_errors=True)
            for path in made:  # deepest first; one that holds something else stays
                with contextlib.suppress(OSError):
                    path.rmdir()
        raise


def read_record(path: Path, key: str) -> dict | None:
    """The JSON object in `path` if it is one with `key` (a record this project writes,
    e.g. an export card); None for a missing, unreadable or other file."""
    try:
        if not path.is_file() or path.stat().st_size > RECORD_LIMIT:
            return None
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and key in record else None


def _fsync_folder(folder: Path) -> None:
    # The rename itself is durable only once the folder's entry is on disk.
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_of(path: Path) -> Path:
    """`step-00000100.pt` -> `step-00000100.pt.sha256` (the format of `sha256sum`)."""
    return path.with_name(path.name + ".sha256")


def write_sidecar(path: Path) -> None:
    """Record the SHA-256 of `path` beside it, for `sha256sum --check` and for loading."""
    atomic_write_text(sidecar_of(path), f"{file_sha256(path)}  {path.name}\n")
