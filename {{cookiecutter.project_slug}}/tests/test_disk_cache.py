"""data.cache=disk: the decoded images in files, memory-mapped. The same batches as the
memory cache and the image files; built once and reused while nothing changed, rebuilt
otherwise; a killed build, two builds at once and a full disk never leave a cache that is
used half-written."""

import errno
import logging
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import write_images
from PIL import Image

from {{ cookiecutter.package_name }}.config import ConfigError, DataConfig
from {{ cookiecutter.package_name }}.data import (
    build_datasets,
    build_loader,
    cache,
    cache_place,
    disk_cache,
)
from {{ cookiecutter.package_name }}.data.disk_cache import DiskCachedImages
from {{ cookiecutter.package_name }}.data.loaders import epoch_batch_sampler
from {{ cookiecutter.package_name }}.log import LOGGER_NAME
from {{ cookiecutter.package_name }}.train import main

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def images_config(tmp_path, **changes) -> DataConfig:
    settings = dict(
        dataset="imagefolder",
        root=str(tmp_path / "images"),
        cache_dir=str(tmp_path / "cache"),
        image_size=16,
        batch_size=4,
        num_workers=0,
        flip=True,
        cache="disk",
    )
    return DataConfig(**{**settings, **changes})


def write_odd_sized_images(root: Path, mode: str = "RGB") -> None:
    """root/{train,val}/{a,b}/*.png: noise of many sizes, wider or taller, so that every
    rounding of a resize or crop shows."""
    noise = random.Random(0)
    for split, count in (("train", 7), ("val", 3)):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                width, height = noise.randint(16, 41), noise.randint(16, 41)
                pixels = noise.randbytes(width * height * 3)
                image = Image.frombytes("RGB", (width, height), pixels).convert(mode)
                image.save(root / split / name / f"{index}.png")


def all_batches(dataset, cfg, train: bool, epochs=(0, 1)) -> list:
    loader = build_loader(dataset, cfg, train=train, seed=3)
    batches = []
    for epoch in epochs if train else (0,):
        if train:
            epoch_batch_sampler(loader).set_epoch(epoch, 0)
        batches += list(loader)
    return batches


def assert_same_batches(first: list, second: list) -> None:
    assert len(first) == len(second) > 0
    for (images, labels), (expected, expected_labels) in zip(first, second, strict=True):
        assert torch.equal(images, expected) and torch.equal(labels, expected_labels)


@pytest.mark.parametrize(("resize", "mode"), [(None, "RGB"), (0, "L")])
def test_disk_cache_batches_equal_the_memory_cache_and_the_files(tmp_path, resize, mode):
    write_odd_sized_images(tmp_path / "images", mode)
    plain = dict(resize=resize, random_crop=False, flip=False)
    disk = build_datasets(images_config(tmp_path, **plain), seed=0)
    memory = build_datasets(images_config(tmp_path, cache=True, **plain), seed=0)
    files = build_datasets(images_config(tmp_path, cache=False, **plain), seed=0)
    assert isinstance(disk.train, DiskCachedImages) and disk.cached == "disk"
    assert disk.mean == memory.mean == files.mean and disk.std == files.std
    cfg = images_config(tmp_path, **plain)
    for train in (True, False):  # shuffled from the seed, and in order
        which = "train" if train else "val"
        expected = all_batches(getattr(files, which), cfg, train)
        assert_same_batches(all_batches(getattr(disk, which), cfg, train), expected)
        assert_same_batches(all_batches(getattr(memory, which), cfg, train), expected)
    # Random crops and flips, per batch from (seed, epoch, first index): as the memory cache.
    augmenting = images_config(tmp_path, resize=resize)
    disk = build_datasets(augmenting, seed=0)
    memory = build_datasets(images_config(tmp_path, cache=True, resize=resize), seed=0)
    assert_same_batches(
        all_batches(disk.train, augmenting, True), all_batches(memory.train, augmenting, True)
    )


def log_lines(project_log) -> list[str]:
    lines = [record.getMessage() for record in project_log.records]
    project_log.clear()
    return lines


def built(lines: list[str]) -> bool:
    assert sum("data.cache=disk: decoding" in line for line in lines) <= 1
    return any("data.cache=disk: decoding" in line for line in lines)


def cache_folders(tmp_path) -> list[str]:
    return sorted(path.name for path in (tmp_path / "cache").iterdir() if path.is_dir())


def test_a_changed_added_or_removed_file_or_setting_rebuilds_the_cache(tmp_path, project_log):
    project_log.set_level(logging.INFO, logger=LOGGER_NAME)
    images = write_images(tmp_path / "images", {"a": 6, "b": 6})
    cfg = images_config(tmp_path)
    build_datasets(cfg, seed=0)
    assert built(log_lines(project_log))
    first = build_datasets(cfg, seed=0)
    assert not built(log_lines(project_log)) and len(first.train) + len(first.val) == 12
    # An image rewritten in place at its own size (the fingerprint alone misses it).
    status = images[0].stat()
    os.utime(images[0], ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    build_datasets(cfg, seed=0)
    assert built(log_lines(project_log))
    # Replaced by other pixels, its size and modification time kept (cp -p, rsync -a).
    status = images[2].stat()
    Image.new("RGB", Image.open(images[2]).size, "black").save(images[2])
    with images[2].open("ab") as file:  # PNG readers stop at its end chunk
        file.write(bytes(status.st_size - images[2].stat().st_size))
    os.utime(images[2], ns=(status.st_atime_ns, status.st_mtime_ns))
    build_datasets(cfg, seed=0)
    assert built(log_lines(project_log))
    write_images(tmp_path / "images", {"a": 2}, first=50)  # added
    grown = build_datasets(cfg, seed=0)
    assert built(log_lines(project_log)) and len(grown.train) + len(grown.val) == 14
    images[1].unlink()  # removed
    shrunk = build_datasets(cfg, seed=0)
    assert built(log_lines(project_log)) and len(shrunk.train) + len(shrunk.val) == 13
    memory = build_datasets(images_config(tmp_path, cache=True, flip=False), seed=0)
    shrunk = build_datasets(images_config(tmp_path, flip=False), seed=0)
    assert not built(log_lines(project_log))  # flips are applied per batch: not stored
    everything = torch.arange(len(memory.val))
    assert torch.equal(shrunk.val[everything][0], memory.val[everything][0])
    # Each setting that shapes the stored squares, then back: rebuilt every time, in the one
    # folder of this data (old caches do not pile up).
    for changes in (
        dict(image_size=12),
        dict(resize=20),
        dict(interpolation="nearest"),
        dict(channels=1),
        dict(skip_bad=True),
        dict(),
    ):
        build_datasets(images_config(tmp_path, **changes), seed=0)
        assert built(log_lines(project_log)), changes
    assert len(cache_folders(tmp_path)) == 1


KILLED_BUILD = """
import os, signal, sys
from {package}.data import build_datasets, disk_cache
from {package}.config import DataConfig

decoded_samples = disk_cache.decoded_samples

def dying(*args, **kwargs):  # killed by SIGKILL after the 5th image, files half-written
    for number, sample in enumerate(decoded_samples(*args, **kwargs)):
        if number == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        yield sample

disk_cache.decoded_samples = dying
build_datasets(DataConfig(**{settings}), seed=0)
"""


@pytest.mark.slow  # a process killed: with the kill tests, out of the quick subset
def test_a_killed_build_leaves_nothing_used_and_the_next_run_builds_again(
    tmp_path, project_log, subprocess_env
):
    project_log.set_level(logging.INFO, logger=LOGGER_NAME)
    write_images(tmp_path / "images", {"a": 8, "b": 8})
    cfg = images_config(tmp_path)
    settings = {key: getattr(cfg, key) for key in ("dataset", "root", "cache_dir", "cache")}
    settings.update(image_size=16, num_workers=0, flip=True)
    script = KILLED_BUILD.format(package="{{ cookiecutter.package_name }}", settings=settings)
    process = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, env=subprocess_env, timeout=120
    )
    assert process.returncode == -9
    leftovers = list((tmp_path / "cache").glob(".*.building-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "train.images").exists()
    assert cache_folders(tmp_path) == [leftovers[0].name]  # no cache in place
    data = build_datasets(cfg, seed=0)
    assert built(log_lines(project_log))
    assert not leftovers[0].exists() and len(cache_folders(tmp_path)) == 1
    memory = build_datasets(images_config(tmp_path, cache=True), seed=0)
    everything = torch.arange(len(memory.train))
    assert torch.equal(data.train[everything][0], memory.train[everything][0])
    # A cache folder without its manifest (written last) is never read: built again.
    (tmp_path / "cache" / cache_folders(tmp_path)[0] / "manifest.json").unlink()
    build_datasets(cfg, seed=0)
    assert built(log_lines(project_log))


def test_two_runs_building_at_once_take_turns(tmp_path, project_log):
    project_log.set_level(logging.INFO, logger=LOGGER_NAME)
    write_images(tmp_path / "images", {"a": 8, "b": 8})
    cfg = images_config(tmp_path)
    start, results = threading.Barrier(2), []

    def build():
        start.wait()
        results.append(build_datasets(cfg, seed=0))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    lines = log_lines(project_log)
    assert len(results) == 2 and built(lines)
    assert sum("are up to date" in line for line in lines) == 1
    everything = torch.arange(len(results[0].train))
    assert torch.equal(results[0].train[everything][0], results[1].train[everything][0])


def test_a_full_disk_is_one_line_and_leaves_no_cache(tmp_path, monkeypatch):
    write_images(tmp_path / "images", {"a": 8, "b": 8})
    monkeypatch.setattr(cache_place, "free_space", lambda folder: 10 << 20)
    with pytest.raises(ConfigError) as error:
        build_datasets(images_config(tmp_path), seed=0)
    message = str(error.value)
    assert "\n" not in message and "needs 64.0 MB" in message and "10.0 MB are free" in message
    assert "data.cache_dir=" in message and "data.cache=false" in message
    assert not (tmp_path / "cache").exists()  # nothing written
    monkeypatch.undo()

    # The disk fills up half-way: the writer's OSError is the same line, and no cache stays.
    decoded_samples = disk_cache.decoded_samples

    def filling(*args, **kwargs):
        for number, sample in enumerate(decoded_samples(*args, **kwargs)):
            if number == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            yield sample

    monkeypatch.setattr(disk_cache, "decoded_samples", filling)
    with pytest.raises(ConfigError, match="^data.cache=disk needs .* data.cache=false$"):
        build_datasets(images_config(tmp_path), seed=0)
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [
        path.name for path in (tmp_path / "cache").glob(".*.lock")
    ]


def test_a_cache_dir_inside_data_root_is_refused_in_one_line(tmp_path, monkeypatch):
    write_images(tmp_path / "images", {"a": 4, "b": 4})
    inside = tmp_path / "images" / "decoded"
    monkeypatch.setattr(cache, "available_memory", lambda device: 1_000)  # null: the disk
    for cache_setting in ("disk", None):
        with pytest.raises(ConfigError) as error:
            build_datasets(images_config(tmp_path, cache=cache_setting, cache_dir=str(inside)), 0)
        assert str(error.value).startswith(f"data.cache_dir={inside} is inside data.root=")
        assert "\n" not in str(error.value) and not inside.exists()


def test_the_automatic_choice_takes_the_disk_when_memory_is_short(
    tmp_path, project_log, monkeypatch
):
    project_log.set_level(logging.INFO, logger=LOGGER_NAME)
    write_images(tmp_path / "images", {"a": 4, "b": 4})
    monkeypatch.setattr(cache, "available_memory", lambda device: 1_000)
    data = build_datasets(images_config(tmp_path, cache=None), seed=0)
    assert data.cached == "disk" and isinstance(data.val, DiskCachedImages)
    (line,) = [line for line in log_lines(project_log) if line.startswith("auto: data.cache")]
    assert line.startswith("auto: data.cache=disk (the decoded images take 0.0 MB, more than")
    assert "on disk they take at most half the" in line
    monkeypatch.setattr(cache_place, "free_space", lambda folder: 0)
    (tmp_path / "cache").rename(tmp_path / "elsewhere")  # no cache whose space counts
    assert build_datasets(images_config(tmp_path, cache=None), seed=0).cached is False
    (line,) = [line for line in log_lines(project_log) if line.startswith("auto: data.cache")]
    assert "on disk they take more than half the 0.0 MB free" in line


@pytest.mark.slow
def test_a_run_on_the_disk_cache_killed_mid_epoch_resumes_exactly(
    make_config, tmp_path, small_overrides, subprocess_env, assert_same_run
):
    """Killed at step 5 (inside epoch 1, a step after a checkpoint) by tests/kill_driver.py,
    then resumed: the very run of an uninterrupted one, the cache built once for both."""
    write_images(tmp_path / "images", {"a": 16, "b": 16})
    settings = (
        "data.dataset=imagefolder",
        f"data.root={tmp_path / 'images'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.cache=disk",
        "data.image_size=16",
        "data.batch_size=8",
        "train.epochs=3",
        "run.save_every_steps=2",
    )
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(make_config(*settings, run_dir=straight)) == 0
    driver = [sys.executable, str(PROJECT_ROOT / "tests" / "kill_driver.py"), "once", "step:5"]
    overrides = [*small_overrides, *settings, f"run.dir={killed}"]
    process = subprocess.run(
        [*driver, *overrides], cwd=PROJECT_ROOT, env=subprocess_env, timeout=180
    )
    assert process.returncode == -9
    assert main(make_config(*settings, "run.resume=auto", run_dir=killed)) == 0
    assert_same_run(straight, killed)
    log = (killed / "train.log").read_text(encoding="utf-8")
    assert "data.cache=disk: decoding" not in log and "are up to date" in log


def test_a_rebuild_needs_room_for_one_cache_and_leftovers_count_as_free(tmp_path, monkeypatch):
    images = write_images(tmp_path / "images", {"a": 6, "b": 6})
    cfg = images_config(tmp_path)
    build_datasets(cfg, seed=0)
    (folder,) = [path for path in (tmp_path / "cache").iterdir() if path.is_dir()]
    stale, size = folder, sum(path.stat().st_size for path in folder.iterdir())
    leftover = tmp_path / "cache" / f".{folder.name}.building-99999"  # a killed build's
    leftover.mkdir()
    (leftover / "train.u8").write_bytes(bytes(size))
    images[0].unlink()  # the cache is stale now

    def used() -> int:
        return sum(path.stat().st_size for path in (tmp_path / "cache").rglob("*.u8"))

    capacity = used()  # a disk full with the stale cache and the leftover
    monkeypatch.setattr(cache_place, "DISK_MARGIN", 0)
    monkeypatch.setattr(cache_place, "free_space", lambda root: capacity - used())
    build_datasets(cfg, seed=0)  # fits in what the stale cache and the leftover free
    assert not leftover.exists() and stale.is_dir()


def test_a_ready_cache_on_a_read_only_disk_is_used(tmp_path, monkeypatch):
    write_images(tmp_path / "images", {"a": 6, "b": 6})
    cfg = images_config(tmp_path)
    first = build_datasets(cfg, seed=0)
    for lock in (tmp_path / "cache").glob(".*.lock"):
        lock.unlink()
    monkeypatch.setattr(disk_cache.os, "access", lambda path, mode: False)
    again = build_datasets(cfg, seed=0)
    everything = torch.arange(len(first.val))
    assert torch.equal(again.val[everything][0], first.val[everything][0])
    assert not list((tmp_path / "cache").glob(".*.lock")), "it wrote a lock file"
