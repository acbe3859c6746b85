"""Shared fixtures: a small, fast configuration, and helpers for subprocesses and metrics."""

import contextlib
import csv
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# `python -m pytest` puts the project root on sys.path, plain `pytest` does not: add it here,
# so that the tests import this checkout's package without `pip install -e .`.
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

# One thread keeps these tiny models fast and avoids oversubscribing the CPU when several
# test processes run side by side.
torch.set_num_threads(1)

# A run of a few hundred small images: one epoch takes well under a second on a CPU. Every
# setting the recipe would choose is given (tests/test_recipe.py covers the choices), so that
# each test runs exactly what it names: uncached, in-process loading, no early stopping, and
# flips, so that augmentation is part of what the tests of exact resume repeat.
SMALL_OVERRIDES = (
    "data.train_size=256",
    "data.val_size=64",
    "data.image_size=32",
    "data.batch_size=32",
    "data.num_workers=0",
    "data.cache=false",
    "data.flip=true",
    "model.width=8",
    "optim.lr=0.01",
    "optim.backbone_lr_ratio=1",
    "train.freeze_epochs=0",
    "train.epochs=1",
    "train.early_stop_patience=0",
    "train.device=cpu",
    "train.threads=1",
    "train.log_every=1000",
)


def _subprocess_env() -> dict:
    """The environment for child processes: one thread each, this project importable."""
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path}


@pytest.fixture(scope="session")
def subprocess_env() -> dict:
    """The environment for child processes: one thread each, this project importable."""
    return _subprocess_env()


@pytest.fixture(scope="session")
def run_python():
    """run_python(*args, timeout=120, env=None, stdout=None) -> `python ARGS` in the project
    root, captured (stdout: a file descriptor to write to instead)."""

    def run(
        *args: str, timeout: int = 120, env: dict | None = None, stdout: int | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args],
            cwd=PROJECT_ROOT,
            env={**_subprocess_env(), **(env or {})},
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )

    return run


@contextlib.contextmanager
def pipe_without_reader() -> Iterator[int]:
    """The writing end of a pipe whose reader has gone, as `python ... | head` leaves stdout
    once head has read its lines: every write to it fails (EPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        yield write_end
    finally:
        os.close(write_end)


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float) -> None:
    """Wait until `path` exists while `process` runs; fail with its output if it ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, str(process.communicate()[0])[-3000:]
        assert time.monotonic() < deadline, f"no {path} appeared within {timeout:g} s"
        time.sleep(0.01)


def _read_metrics(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="session")
def read_metrics():
    """read_metrics(run_dir) -> the rows of the run's metrics.csv, as dicts of strings."""
    return _read_metrics


def assert_same(expected, actual, where: str = "") -> None:
    """Nested dicts/lists compared exactly, tensors with torch.equal (dtype included)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert expected.dtype == actual.dtype and torch.equal(expected, actual), where
    elif isinstance(expected, dict):
        assert set(expected) == set(actual), where
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            assert_same(left, right, f"{where}[{index}]")
    else:
        assert expected == actual, where


# Columns that measure time, and so differ between two otherwise identical runs.
TIMING_COLUMNS = ("epoch_time_s", "samples_per_s")


def _comparable_config(config: dict) -> dict:
    """The settings that must agree for two runs to train identically."""
    config = {key: value for key, value in config.items() if key != "run"}
    config["data"] = {k: v for k, v in config["data"].items() if k != "num_workers"}
    return config


def _assert_same_run(expected_dir: Path, actual_dir: Path) -> None:
    from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint

    expected = load_checkpoint(expected_dir / "checkpoints" / "last.pt")
    actual = load_checkpoint(actual_dir / "checkpoints" / "last.pt")
    assert set(expected) == set(actual)
    for key in ("model", "optimizer", "scheduler", "scaler", "progress", "rng", "classes"):
        assert_same(expected[key], actual[key], key)
    assert _comparable_config(expected["config"]) == _comparable_config(actual["config"])

    def without_timings(rows):
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]

    expected_rows = without_timings(_read_metrics(expected_dir))
    assert len(expected_rows) == expected["config"]["train"]["epochs"]
    assert without_timings(_read_metrics(actual_dir)) == expected_rows


@pytest.fixture(scope="session")
def assert_same_run():
    """assert_same_run(expected_dir, actual_dir): the final last.pt of both runs holds equal
    tensors (model, optimizer, scaler, scheduler, RNG) and progress, and metrics.csv has
    the same rows apart from the timing columns. Settings of run.* and data.num_workers
    may differ."""
    return _assert_same_run


def write_images(
    root: Path,
    counts: dict[str, int],
    *,
    mode: str = "RGB",
    suffix: str = ".png",
    size: int = 16,
    first: int = 0,
) -> list[Path]:
    """root/<class>/<n><suffix>: `counts[class]` small images a model can learn to tell apart.

    Class k has a bright horizontal band at its own height (kept by crops, flips and
    grayscale conversion) and its own tint, plus seeded noise. Files are numbered from
    `first`, so a second call can add images to a class. Returns the paths written.
    """
    from PIL import Image

    written = []
    for number, (name, count) in enumerate(counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        noise = torch.Generator().manual_seed(1000 * number + first)
        for index in range(first, first + count):
            pixels = torch.randint(0, 60, (size, size, 3), generator=noise)
            band = slice(number * size // 4 + 1, number * size // 4 + size // 4 + 1)
            pixels[band] += 150
            pixels[..., number % 3] += 40
            image = Image.fromarray(pixels.clamp(0, 255).to(torch.uint8).numpy(), "RGB")
            written.append(folder / f"{index:03d}{suffix}")
            image.convert(mode).save(written[-1])
    return written


@pytest.fixture
def make_config(tmp_path):
    """make_config(*overrides, run_dir=None) -> a validated small Config.

    The run folder defaults to `tmp_path / "run"`; later overrides win over the small ones.
    """
    from {{ cookiecutter.package_name }}.cli import DEFAULT_CONFIG
    from {{ cookiecutter.package_name }}.config import load_config

    def make(*overrides: str, run_dir: Path | None = None):
        folder = run_dir if run_dir is not None else tmp_path / "run"
        return load_config([DEFAULT_CONFIG], [*SMALL_OVERRIDES, f"run.dir={folder}", *overrides])

    return make


@pytest.fixture(scope="session")
def small_overrides() -> tuple[str, ...]:
    """The `key=value` overrides of the small config (without run.dir)."""
    return SMALL_OVERRIDES


@pytest.fixture
def small_config(make_config):
    """The small config with its run folder under tmp_path."""
    return make_config()


@pytest.fixture
def sighup_at_its_default():
    """SIGHUP at its default in this process and the runs it starts, as from a terminal: a
    suite started under `nohup` ignores it, children inherit that, and the project then
    (rightly) goes on through a SIGHUP as nohup asks."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGHUP, previous)


@pytest.fixture
def project_log(caplog, monkeypatch):
    """caplog, seeing the project's logger (which stops propagation once logging is set up)."""
    monkeypatch.setattr(logging.getLogger("{{ cookiecutter.package_name }}"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="{{ cookiecutter.package_name }}")
    return caplog


@pytest.fixture(autouse=True)
def close_log_files():
    """Close the file handlers that an in-process training run leaves on the project logger."""
    yield
    logger = logging.getLogger("{{ cookiecutter.package_name }}")
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
