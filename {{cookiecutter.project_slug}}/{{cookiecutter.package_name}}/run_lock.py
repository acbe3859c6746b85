"""One writer per run folder: an OS lock on `<run folder>/run.lock`, held for the whole run.

Two runs writing one folder would interleave their metrics.csv rows and overwrite each
other's checkpoints. The lock is `flock`: the kernel releases it when its holder ends in any
way, a SIGKILL included, so no lock is ever stale and nothing needs clearing by hand. The
file stays behind and names its last holder (pid, host, start time), which is what a second
writer is told. Readers (evaluate, predict, export) take no lock. A folder that is not a
run's (runs.check_run_folder) is refused before anything in it is touched.

(The `filelock` package would lock as well, but a second writer must be able to read who
holds the lock, and nothing may truncate the holder's record: a few lines of fcntl do both.
On a network filesystem, flock works where the filesystem supports it: NFSv4 and Lustre
with the flock mount option do.)
"""

import datetime
import errno
import json
import logging
import os
import socket
import stat
from pathlib import Path

from .config import ConfigError
from .runs import LOCK_FILE, check_run_folder

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

logger = logging.getLogger(__name__.rsplit(".", 1)[0])


class RunFolderBusy(ConfigError):
    """The run folder cannot be taken: another process is writing it, or it is not a run
    folder (one error for both, so that under torchrun every rank stops on it)."""


class RunLock:
    """The lock of one run folder, held until `release` (or until this process ends)."""

    def __init__(self, folder: Path, descriptor: int | None, made: tuple[bool, bool]) -> None:
        self.folder, self.descriptor = folder, descriptor
        self.made_folder, self.made_file = made
        self.announced = False

    @classmethod
    def acquire(cls, folder: Path) -> "RunLock":
        """Lock `folder` (made if missing) at once, or raise RunFolderBusy naming the holder
        (or saying why the folder is not one a run may write)."""
        try:
            check_run_folder(folder)
        except ConfigError as error:
            raise RunFolderBusy(str(error)) from None
        made_folder = not folder.exists()
        made_file = not os.path.lexists(folder / LOCK_FILE)
        if fcntl is None:
            logger.warning("no run-folder lock on this system: start one run per run.dir")
            folder.mkdir(parents=True, exist_ok=True)
            return cls(folder, None, (made_folder, made_file))
        while True:
            folder.mkdir(parents=True, exist_ok=True)
            descriptor = _open_lock_file(folder / LOCK_FILE)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(descriptor)
                os.close(descriptor)
                raise RunFolderBusy(
                    f"{folder} is in use by another run ({holder}); wait for it to end, or "
                    "give this run another run.dir"
                ) from None
            if _still_the_lock_file(folder / LOCK_FILE, descriptor):
                return cls(folder, descriptor, (made_folder, made_file))
            os.close(descriptor)  # the holder removed the file as we opened it: again

    def announce(self) -> None:
        """Write who holds the lock into it, for a second writer to read: from now on
        this run writes the folder."""
        if self.descriptor is not None:
            _write_holder(self.descriptor)
            self.announced = True

    def release(self) -> None:
        """Unlock. A run that wrote nothing (it failed early, or had nothing to do) leaves
        things as it found them: a folder or lock file it made is removed again."""
        if self.descriptor is None:
            return
        lock_file = self.folder / LOCK_FILE
        if self.made_folder and [path.name for path in self.folder.iterdir()] == [LOCK_FILE]:
            lock_file.unlink()
            self.folder.rmdir()
        elif self.made_file and not self.announced:
            lock_file.unlink(missing_ok=True)
        os.close(self.descriptor)  # closing releases the lock
        self.descriptor = None


def _open_lock_file(path: Path) -> int:
    """The lock file, opened (made if missing) for reading and writing; RunFolderBusy where
    `path` is not a regular file. A symbolic link there is never followed (O_NOFOLLOW): the
    holder's record would replace the content of whatever file it points to."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        # O_NONBLOCK: a pipe put there opens at once (and is refused below), never waits.
        descriptor = os.open(path, flags | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.EISDIR):
            raise
        descriptor = None
    if descriptor is not None and stat.S_ISREG(os.fstat(descriptor).st_mode):
        return descriptor
    if descriptor is not None:
        os.close(descriptor)
    raise RunFolderBusy(
        f"{path} is not the lock file this project makes (it is a symbolic link, a folder or "
        "another special file), and a run never writes through one; remove it or move it "
        "away, then start the run again"
    )


def _still_the_lock_file(path: Path, descriptor: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


def _write_holder(descriptor: int) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, (json.dumps(holder) + "\n").encode(), 0)


def _read_holder(descriptor: int) -> str:
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0).decode() or "{}")
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, OSError):  # written by an older version, or half-written
        return "holder unknown"
