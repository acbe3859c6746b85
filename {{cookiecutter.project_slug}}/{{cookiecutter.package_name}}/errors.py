"""The one place that turns an error into the line a user sees and the exit code.

Every entry point (train, evaluate, predict, export, sweep) runs through `exit_code_of`: a
mistake in the input or the environment ends in one line, `error: <problem>; <fix>`, on
stderr and exit code 2 (a setting) or 1 (anything else), never in a Python traceback. The
errors it knows: the project's own (ConfigError, CheckpointError), the operating system's (a
read-only or full disk, a denied permission, a path through a file, a missing file), the
network's (a download that failed) and a missing package. Any other exception is a bug in
the code, and keeps its traceback: hiding it would hide where to look.

This module imports neither torch nor omegaconf: it must still speak when one of them is
the package that is missing.
"""

import errno
import io
import os
import socket
import sys
import urllib.error
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Exit codes: 2 for a usage or config error, 1 for any other failure, 130 for Ctrl-C. A
# reader of stdout that went away (`... | head`) is no failure: see QuietStdout.
USAGE_ERROR, FAILURE, INTERRUPTED = 2, 1, 130

# Packages the project imports, by their import name: the command that installs each.
# (`pip install -e .` in the project folder installs every dependency at once.)
PACKAGES = {
    "torch": "pip install -e .",
    "torchvision": "pip install -e .",
    "omegaconf": "pip install -e .",
    "yaml": "pip install -e .",
    "numpy": "pip install -e .",
    "PIL": "pip install -e .",
    "tqdm": "pip install -e .",
    "matplotlib": "pip install -e .",
    "safetensors": "pip install safetensors",
    "tensorboard": "pip install tensorboard",
    "mlflow": "pip install mlflow-skinny",
    "wandb": "pip install wandb",
    "optuna": "pip install optuna",
    # Quoted: zsh, macOS's shell, would read the brackets as a file pattern.
    "onnx": 'pip install -e ".[export]"',
    "onnxscript": 'pip install -e ".[export]"',
    "onnxruntime": 'pip install -e ".[export]"',
    "webdataset": 'pip install -e ".[shards]"',
}

# What each kind of operating-system error means, said without jargon.
OS_PROBLEMS = {
    errno.EROFS: "is on a read-only filesystem",
    errno.EACCES: "is not accessible: permission denied",
    errno.EPERM: "is not accessible: operation not permitted",
    errno.ENOTDIR: "cannot be used: a part of its path is a file, not a folder",
    errno.EEXIST: "is a file where a folder is needed",
    errno.EISDIR: "is a folder where a file was expected",
    errno.ENOENT: "does not exist",
    errno.ENOSPC: "could not be written: no space left on the device",
    errno.EDQUOT: "could not be written: the disk quota is used up",
}
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, socket.gaierror, TimeoutError)


class EnvironmentProblem(Exception):
    """A problem of the machine rather than of the settings (a download that failed, ...),
    already said in one line with its fix: it exits with FAILURE."""


@dataclass(frozen=True)
class Failure:
    """What to tell the user, and the exit code."""

    message: str
    code: int


def one_line(error: BaseException) -> str:
    """The message of `error`, also when a DataLoader worker raised it: the loader then
    re-raises it with the worker's traceback as its message, whose last line is the
    original `ExceptionType: message`."""
    text = worker_message(str(error).strip())
    return text.splitlines()[0] if text else type(error).__name__


def worker_message(text: str) -> str:
    """The original message in `text` where it is the one a DataLoader worker's error gets
    in the main process ("Caught X in DataLoader worker ...", its traceback, then
    `X: message`); `text` itself otherwise."""
    lines = text.rstrip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught "):
        return lines[-1].split(": ", 1)[-1]
    return text


def _is_project_error(error: BaseException, module: str, name: str) -> bool:
    """Whether `error` is the project's `module.name`, checked without importing the module
    (which imports torch or omegaconf): an error of that class exists only once it is."""
    loaded = sys.modules.get(f"{__package__}.{module}")
    return loaded is not None and isinstance(error, getattr(loaded, name))


def describe(error: BaseException, fix: str) -> Failure | None:
    """The line and exit code for `error`, or None for a bug. `fix` says how to choose
    another place to write (e.g. "point run.dir at a writable folder")."""
    if _is_project_error(error, "config", "ConfigError"):
        return Failure(one_line(error), USAGE_ERROR)
    if _is_project_error(error, "checkpoint", "CheckpointError"):
        return Failure(str(error), FAILURE)
    if isinstance(error, EnvironmentProblem):
        return Failure(one_line(error), FAILURE)
    if isinstance(error, ModuleNotFoundError):
        return _missing_package(error)
    if isinstance(error, NETWORK_ERRORS) or _is_failed_download(error):
        return Failure(_network(error), FAILURE)
    if isinstance(error, OSError):
        return Failure(_os_problem(error, fix), FAILURE)
    return None


def _missing_package(error: ModuleNotFoundError) -> Failure | None:
    message = missing_package(error)
    return None if message is None else Failure(message, FAILURE)


def missing_package(error: ModuleNotFoundError) -> str | None:
    """What is missing and the pip command that installs it, for a package the project
    uses; None for any other module (e.g. one of this project: a bug)."""
    package = (error.name or "").split(".")[0]
    if package not in PACKAGES:
        return None
    return (
        f"the package {package} is not installed in {sys.executable}; install it with "
        f"{PACKAGES[package]} (in the project folder)"
    )


def _is_failed_download(error: BaseException) -> bool:
    # torchvision's datasets with several mirrors (MNIST) gather each mirror's URLError
    # into one RuntimeError of this wording.
    return isinstance(error, RuntimeError) and str(error).startswith("Error downloading")


def _network(error: BaseException) -> str:
    if _is_failed_download(error):  # its first line names the file, its last the reason
        lines = str(error).strip().splitlines()
        return (
            f"a download failed ({lines[0].rstrip(':')}: {lines[-1].strip()}); check the "
            "network connection and try again, or fetch the files on a machine that has one "
            "and copy them here (into data.root for a dataset)"
        )
    # Datasets word their own download failures (data/torchvision_datasets.py): what comes
    # here is any other connection, e.g. a tracker's server that went away during a run.
    reason = getattr(error, "reason", None) or getattr(error, "strerror", None)
    return (
        f"a network connection failed ({reason or one_line(error)}); check the network "
        "connection and the proxy settings (HTTPS_PROXY), then run the command again"
    )


def _os_problem(error: OSError, fix: str) -> str:
    """`<path> <what is wrong>; <how to fix it>`, from the errno and file names of `error`."""
    path = error.filename if error.filename is not None else "a file"
    if error.filename2 is not None:
        path = f"{path} (-> {error.filename2})"
    problem = OS_PROBLEMS.get(error.errno)
    if problem is None:
        problem = f"could not be used ({error.strerror or one_line(error)})"
    if error.errno in FULL_DISK:
        advice = f"free disk space (what was saved before is intact), or {fix}"
    elif error.errno == errno.ENOENT:
        advice = "check the path"
    elif error.errno in (errno.EACCES, errno.EPERM):
        advice = f"check its permissions, or {fix}"
    else:
        advice = fix
    return f"{path} {problem}; {advice}"


def report(failure: Failure) -> int:
    """Print `failure` as one line on stderr; return its exit code."""
    print(f"error: {failure.message}", file=sys.stderr)
    return failure.code


class QuietStdout:
    """stdout that never raises. A write or flush that fails means nobody reads stdout any
    more: its reader went away (`... | head`: EPIPE), it was closed (`>&-`), or the device is
    full (`>/dev/full`: ENOSPC). The results printed there were for that reader alone, so
    the command goes on without them and writes its files all the same; only what is
    printed from then on is dropped.

    File descriptor 1 is then pointed at /dev/null, as the Python documentation on SIGPIPE
    advises: the interpreter's last flush at exit finds somewhere to write (no "Exception
    ignored" line), and a closed descriptor 1 cannot be taken by the next file the command
    opens (a checkpoint or CSV file would receive whatever is printed).
    """

    def __init__(self, stream) -> None:
        self.stream = stream
        self.gone = False
        # Python starts with sys.stdout None when descriptor 1 is closed (`>&-`); a stream
        # may also wrap a descriptor that was closed after start.
        fd = STDOUT_FD if stream is None else _fd_of(stream)
        if stream is None or (fd is not None and not _is_open(fd)):
            self.let_go()

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream.write(text)
            except (OSError, ValueError):  # ValueError: the stream itself was closed
                self.let_go()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self.let_go()

    def let_go(self) -> None:
        """Write no more, and send descriptor 1 (where it is this stream's) to /dev/null."""
        self.gone = True
        fd = STDOUT_FD if self.stream is None else _fd_of(self.stream)
        if fd is None or (self.stream is None and _is_open(fd)):
            return  # no descriptor, or one that another file took after a closed start
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
        except OSError:
            return
        if devnull != fd:  # a closed descriptor may be the one open() just handed out
            os.dup2(devnull, fd)
            os.close(devnull)

    def isatty(self) -> bool:
        try:
            return not self.gone and self.stream.isatty()
        except (OSError, ValueError):
            return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"

    def fileno(self) -> int:
        if self.stream is None:
            raise io.UnsupportedOperation("stdout is closed")
        return self.stream.fileno()

    def __getattr__(self, name: str):
        if name == "stream":  # asked before __init__ set it (a copy, say)
            raise AttributeError(name)
        return getattr(self.stream, name)  # anything else a library asks of stdout


STDOUT_FD = 1


def _fd_of(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture), or closed
        return None


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def quiet(stream) -> QuietStdout:
    """`stream` (sys.stdout, or None where Python found stdout closed) as a QuietStdout."""
    return stream if isinstance(stream, QuietStdout) else QuietStdout(stream)


def print_lines(lines: Iterable[str]) -> None:
    """Print `lines` to stdout. If nobody reads it any more (`... | head`, a closed or full
    stdout), print no more and go on: the files the command writes after its printed
    results are still written."""
    stdout = quiet(sys.stdout)
    for line in lines:
        if stdout.gone:
            break
        print(line, file=stdout)
    stdout.flush()


def exit_code_of(function: Callable[..., int], *args, fix: str) -> int:
    """`function(*args)`, with the errors this module knows turned into one line and an
    exit code, and Ctrl-C into 130; a bug's traceback passes through. Meanwhile sys.stdout
    is a QuietStdout: a reader of stdout that went away, or a closed or full stdout, ends
    no command (what it printed was for that reader alone)."""
    outer = sys.stdout
    stdout = sys.stdout = quiet(outer)
    try:
        return function(*args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as error:
        failure = describe(error, fix)
        if failure is None:
            raise
        return report(failure)
    finally:
        stdout.flush()  # here, quietly: the interpreter's own flush at exit would not be
        if sys.stdout is stdout:
            sys.stdout = outer
