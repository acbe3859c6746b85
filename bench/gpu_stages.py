"""What the stages of bench/gpu_check.py run on: a time budget, commands and functions held
to a time limit, and the folder of JPEG files the loader reads."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

POLL_S = 0.05


class Budget:
    """The seconds left of the whole check; a stage gets its own limit or what is left."""

    def __init__(self, total_s: float) -> None:
        self.deadline = time.perf_counter() + total_s

    def limit(self, wanted_s: float) -> float:
        return min(wanted_s, self.deadline - time.perf_counter())


def run_command(
    command: list[str],
    limit_s: float,
    cwd: Path,
    env: dict,
    until: Callable[[], bool] | None = None,
) -> dict:
    """Run `command` in a process group of its own, killed whole after `limit_s` seconds.

    With `until`, a function polled while it runs: once it is true, the command is asked
    to stop (SIGTERM) and `until_s` says after how many seconds. Returns status (ok, failed
    or timeout), returncode, seconds, stdout, and the tail of stderr.
    """
    started = time.perf_counter()
    status, until_s = None, None
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=err, text=True, start_new_session=True
        )
        while process.poll() is None:
            elapsed = time.perf_counter() - started
            if elapsed > limit_s:
                status = "timeout"
                signal_group(process.pid, signal.SIGKILL)
                break
            if until is not None and until_s is None and until():
                until_s = elapsed
                signal_group(process.pid, signal.SIGTERM)
            time.sleep(POLL_S)
        process.wait()
        signal_group(process.pid, signal.SIGKILL)  # workers or children it left behind
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    seconds = time.perf_counter() - started
    if until is not None and until_s is None and status is None and until():
        until_s = seconds  # reached in the run's last moments
    if status is None:
        status = "ok" if process.returncode == 0 or until_s is not None else "failed"
    if status == "timeout":
        stderr += f"\nstopped after its limit of {limit_s:.0f} s"
    return {
        "status": status,
        "returncode": process.returncode,
        "seconds": seconds,
        "stdout": stdout,
        "tail": stderr[-3000:],
        "until_s": until_s,
    }


def signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class StageTimeout(BaseException):
    """Raised by the alarm of `in_process`; a BaseException, so that no library's
    `except Exception` swallows it."""


def in_process(function: Callable[[], object], limit_s: float) -> dict:
    """`function()` in this process, stopped by an alarm after `limit_s` seconds:
    {'status': 'ok', 'value': ...} or {'status': 'failed' or 'timeout', 'note': ...}."""

    def expire(signum, frame) -> None:
        raise StageTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(limit_s, 0.01))
    try:
        return {"status": "ok", "value": function()}
    except StageTimeout:
        return {"status": "timeout", "note": f"stopped after its limit of {limit_s:.0f} s"}
    except Exception as error:  # recorded as the stage's failure; the next stage runs
        lines = str(error).strip().splitlines() or [""]
        return {"status": "failed", "note": f"{type(error).__name__}: {lines[0]}"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def write_jpeg_folder(project: Path, folder: Path, per_class: int, side: int) -> int:
    """folder/<class>/<n>.jpg: `per_class` images of each built-in shape class, drawn by the
    project at side `side` (JPEG quality 90); returns how many were written."""
    from PIL import Image

    sys.path.insert(0, str(project))
    package = next(project.glob("*/engine.py")).parent.name
    shapes = import_module(f"{package}.shapes")
    classes = shapes.SHAPE_CLASSES
    total, chunk, written = per_class * len(classes), 256, 0
    for first in range(0, total, chunk):
        count = min(chunk, total - first)
        images, labels = shapes.make_shapes(count, side, seed=first)
        for number, (image, label) in enumerate(zip(images, labels, strict=True)):
            target = folder / classes[label]
            target.mkdir(parents=True, exist_ok=True)
            pixels = image.permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(target / f"{first + number}.jpg", quality=90)
            written += 1
    return written
