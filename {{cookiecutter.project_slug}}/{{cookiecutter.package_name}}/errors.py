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
import os
import select
import socket
import sys
import urllib.error
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Exit codes: 2 for a usage or config error, 1 for any other failure, 130 for Ctrl-C, and
# 141 when the reader of stdout went away (`... | head`), as a shell reports such a tool.
USAGE_ERROR, FAILURE, INTERRUPTED, READER_GONE = 2, 1, 130, 141

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


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has exited (`python predict.py ... | head`).
    A BrokenPipeError alone cannot tell: a tracker's lost network connection raises it too.
    (Linux flags such a pipe with POLLERR, macOS and the BSDs with POLLHUP.)"""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        gone = select.POLLERR | select.POLLHUP
        return any(events & gone for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no file descriptor
        return False


def silence_stdout() -> None:
    """Send stdout nowhere from now on: its reader is gone, and every later write, the
    interpreter's last flush included, would raise BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def print_lines(lines: Iterable[str]) -> None:
    """Print `lines` to stdout. If its reader stops reading (`... | head`), print no more and
    go on, so that the files the command writes after its printed results are still written."""
    try:
        for line in lines:
            print(line)
        sys.stdout.flush()
    except BrokenPipeError:  # a write to stdout failed: its reader is gone
        silence_stdout()


def exit_code_of(function: Callable[..., int], *args, fix: str) -> int:
    """`function(*args)`, with the errors this module knows turned into one line and an
    exit code, Ctrl-C into 130 and a reader of stdout that went away into a quiet 141; a
    bug's traceback passes through."""
    try:
        code = function(*args)
        sys.stdout.flush()  # here, where a reader that went away is still handled below
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as error:
        if isinstance(error, BrokenPipeError) and stdout_reader_gone():
            silence_stdout()  # it had what it wanted; nothing to say, and nowhere to say it
            return READER_GONE
        failure = describe(error, fix)
        if failure is None:
            raise
        return report(failure)
