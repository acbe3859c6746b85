"""The device to run on, and the numeric precision of the forward pass on it.

Its own module so that evaluate.py and predict.py pick a device and precision as training
does without importing the training script's dependencies.
"""

import contextlib
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError, TrainConfig
from .features import feature_module


def processes_on_this_machine() -> int:
    """The training processes that share this machine (torchrun's LOCAL_WORLD_SIZE; 1 alone)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


# Environment variables that set torch's CPU threads: where the user set one, it wins.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# How long the start of a run looks at the CPUs to see how busy other work keeps them.
LOOK_SECONDS = 0.3


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, e.g. a container's or taskset's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_cores(seconds: float = LOOK_SECONDS) -> float | None:
    """How many of this process's cores other work keeps busy: their share of non-idle time
    over `seconds` (Linux's /proc/stat), else the 1-minute load average; None where the
    system tells neither. This process sleeps meanwhile, so it is not counted."""
    first = _cpu_times()
    if first is None:
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    time.sleep(seconds)
    second = _cpu_times()
    busy = 0.0
    for cpu, (idle, total) in second.items():
        idle_before, total_before = first.get(cpu, (idle, total))
        if total > total_before:
            busy += 1 - (idle - idle_before) / (total - total_before)
    return busy


def _cpu_times() -> dict[int, tuple[int, int]] | None:
    """cpu number -> (idle + iowait ticks, all ticks), for the cores of this process."""
    try:
        lines = Path("/proc/stat").read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    times = {}
    for line in lines:
        name, *ticks = line.split()
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        if mine is None or int(name[3:]) in mine:
            values = [int(tick) for tick in ticks[:8]]  # user ... steal; guests are in user
            times[int(name[3:])] = (values[3] + values[4], sum(values))
    return times or None


def automatic_threads(
    default: int,
    processes_here: int,
    cores: int,
    busy: float | Callable[[], float | None] | None,
    environ=os.environ,
) -> tuple[int, str]:
    """train.threads left null: the number, and why (for its auto: line).

    torch's default (one thread per physical core, or what OMP_NUM_THREADS says), shared
    out among the processes of a job on this machine, and no more than the cores other
    work leaves free at the start. A thread on a core that another process keeps busy
    waits for it at every parallel operation, while the others spin: on 2 cores with one
    busy process, 2 threads made each step 6-20x slower than 1 (bench/README.md).
    """
    shared = f", shared by {processes_here} processes" if processes_here > 1 else ""
    share = max(default // processes_here, 1)
    given = [f"{name}={environ[name]}" for name in THREAD_VARIABLES if environ.get(name)]
    if given:
        return share, f"{given[0]} in the environment{shared}"
    if share == 1:  # one thread each already: nothing to take back
        return share, f"torch's default{shared}"
    if callable(busy):  # looked at only here: it takes LOOK_SECONDS of the run's start
        busy = busy()
    if busy is None:
        return share, f"torch's default{shared}; how busy the CPUs are is unknown here"
    # The job's other processes are starting beside this one: their load is not others'.
    others = max(busy - (processes_here - 1), 0.0)
    free = max(cores - math.floor(others + 0.5), 1)
    threads = min(share, max(free // processes_here, 1))
    load = f"{others:.1f} of {cores} CPU cores busy with other work at the start"
    if threads < share:
        return threads, f"{load}: a thread on a busy core would slow every step{shared}"
    return threads, f"torch's default{shared}; {load}"


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: no CUDA GPU is visible; use train.device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={name}: MPS is not available; use train.device=cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        # Input shapes are fixed, so cuDNN's one-off search for the fastest kernels pays.
        torch.backends.cudnn.benchmark = True
    return device


def copy_to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor (a batch's indices, its random crops) on `device`. To a GPU it goes
    through pinned memory without blocking: a plain copy would make the host wait for every
    step queued on the GPU, once a batch."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@dataclass(frozen=True)
class Precision:
    """How forward passes compute: `autocast()` is entered around each one, and `scaler`
    scales the loss (an fp16 grad scaler; a disabled one passes every call through)."""

    autocast: Callable[[], AbstractContextManager]
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None  # the autocast dtype; None for plain float32

    def describe(self) -> str:
        return str(self.dtype) if self.dtype is not None else "off"


def float32_precision(device: torch.device) -> Precision:
    """Plain float32: no autocast, no loss scaling."""
    return Precision(contextlib.nullcontext, torch.amp.GradScaler(device.type, enabled=False), None)


def precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """Mixed precision as train.amp asks, in projects generated with it; else float32."""
    amp = feature_module("amp")
    return amp.precision(cfg, device) if amp is not None else float32_precision(device)
