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

A command replaces or removes only files it wrote: the record of a set (export.json,
evaluate's data.json) keeps each file's size and SHA-256 (`written_record`), and a file is
the set's while it is a plain file that still matches (`foreign_file`). One that a user put
in its place, a link, or a file of an older set with no record is never replaced or removed.
"""

import contextlib
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping
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
                os.fchmod(file.fileno(), umask_mode())
                os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename == str(temporary):
            # Name the user's file, not our temporary one (nor the rename between them).
            error.filename, error.filename2 = str(path), None
        raise


def umask_mode() -> int:
    """The mode the user's umask gives a new file (0o644 under umask 022).

    Every file the project writes gets it: libraries that write through a temporary file of
    their own (safetensors, via mkstemp) would otherwise leave a 0600 file among 0644 ones,
    unreadable to the group that shares the run folder. The umask is read from /proc where
    Linux offers it: the portable way, setting it and setting it back, changes it for a
    moment in every thread of the process.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


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
def staged_files(folder: Path, retire: Mapping[str, object] | None = None) -> Iterator[Path]:
    """Write a set of files together: yield an empty staging folder inside `folder` (made
    if missing) to write them to. When the block ends, each moves into `folder` under its
    own name, replacing its namesake, and the files of `retire` (an earlier set's, by name,
    with the record each was written with: see written_record) that this set does not have
    are removed, each only while it still matches its record.

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
        for name in names:
            if stat.S_ISREG((staging / name).lstat().st_mode):  # a link's mode is its target's
                os.chmod(staging / name, umask_mode())
        with placing(folder / name for name in names):
            for name in names:
                os.replace(staging / name, folder / name)
            for name in sorted(set(retire or {}) - set(names)):
                if matches(folder / name, retire[name]):
                    (folder / name).unlink()
            staging.rmdir()
            _fsync_folder(folder)
    except BaseException:
        with placing():  # a second signal must not cut the clean-up short
            shutil.rmtree(staging, ignore_errors=True)
            for path in made:  # deepest first; one that holds something else stays
                with contextlib.suppress(OSError):
                    path.rmdir()
        raise


def file_record(path: Path) -> dict:
    """What a set's record keeps of one of its files: its size and SHA-256."""
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def written_record(folder: Path, names: Iterable[str]) -> dict[str, dict]:
    """name -> file_record of each named file in `folder`, for a set's record to keep."""
    return {name: file_record(folder / name) for name in sorted(names)}


def matches(path: Path, record: object) -> bool:
    """Whether `path` is a plain file (not a link) with the size and SHA-256 of `record`
    (a file_record, as read back from a set's record: anything else matches nothing)."""
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        return False
    try:
        status = path.lstat()
        return (
            stat.S_ISREG(status.st_mode)
            and status.st_size == record.get("bytes")
            and file_sha256(path) == record["sha256"]
        )
    except OSError:
        return False


def recorded_files(record: dict | None) -> dict[str, object]:
    """The files a set's `record` says it wrote (its "written": name -> file_record), by
    plain names only; none for a record without them (one from before records were kept)."""
    written = record.get("written") if record is not None else None
    if not isinstance(written, dict):
        return {}
    return {
        name: entry
        for name, entry in written.items()
        if isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
    }


def foreign_file(folder: Path, names: Iterable[str], written: Mapping[str, object]) -> Path | None:
    """The first of `names` that exists in `folder` and is not the file `written` records
    under its name (a file the user put there, a link, one changed since, one with no
    record): a set may replace none of those. None where each is absent or as written."""
    for name in sorted(names):
        path = folder / name
        if os.path.lexists(path) and not matches(path, written.get(name)):
            return path
    return None


def read_record(path: Path, key: str) -> dict | None:
    """The JSON object in `path` if it is one with `key` (a record this project writes,
    e.g. an export card); None for a missing, unreadable or other file."""
    try:
        record = read_small_json(path, RECORD_LIMIT, "a record")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and key in record else None


def read_small_file(path: Path, limit: int, what: str) -> bytes:
    """The bytes of `path`, a record of at most `limit` bytes (`what` it is, for the error).
    FileNotFoundError where there is none; another OSError where it is not a regular file
    (a pipe would wait forever for a writer, a device such as /dev/zero never end); a
    ValueError where it is larger. Read once from one open file: what is checked is read."""
    # O_NONBLOCK: a pipe opens at once instead of waiting for a writer (it is refused
    # below); O_NOCTTY: a terminal named here does not become this process's.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    with open(os.open(path, flags), "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise OSError("it is not a regular file")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"more than {limit} bytes, far too large for {what}")
    return data


def read_small_json(path: Path, limit: int, what: str) -> object:
    """The JSON value in `path`, read by read_small_file; a ValueError also where it is not
    UTF-8 JSON or nests too deeply for the parser (its RecursionError)."""
    data = read_small_file(path, limit, what)
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"not {what}: its JSON nests too deeply") from None


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
