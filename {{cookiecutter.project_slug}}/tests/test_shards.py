"""Shards: prepare_shards.py's tar shards and data.dataset=shards, against the image folder
they were written from (same samples, pixel for pixel), their order, their split over the
processes of a run, resuming inside an epoch, and what a killed or damaged write leaves."""

import dataclasses
import itertools
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, _subprocess_env, wait_for_file, write_images

from {{ cookiecutter.package_name }} import pipe_roots
from {{ cookiecutter.package_name }}.config import (
    ConfigError,
    DataConfig,
    load_config,
    load_saved_config,
    to_dict,
)
from {{ cookiecutter.package_name }}.data import DataError, build_datasets, build_loader, epoch_batch_sampler
from {{ cookiecutter.package_name }}.data.shard_index import SHARDS_FILE, read_index
from {{ cookiecutter.package_name }}.data.shard_writer import ShardPlan, prepare_shards
from {{ cookiecutter.package_name }}.data.shards import ShardBatches
from {{ cookiecutter.package_name }}.errors import missing_package

pytest.importorskip("webdataset", reason="the [shards] extra (webdataset) is not installed")

CLASSES = {"ant": 10, "bee": 10, "cow": 10}  # 24 train / 6 val with data.val_fraction=0.2
STATS = dict(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])


def folder_config(root: Path, **changes) -> DataConfig:
    settings = dict(
        dataset="imagefolder",
        root=str(root),
        image_size=12,
        batch_size=8,
        num_workers=0,
        cache=False,
        flip=True,
        random_crop=True,
        shuffle_buffer=5,
        **STATS,
    )
    return DataConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_images(root, CLASSES, size=16)
    write_images(root, {"ant": 2}, size=20, suffix=".jpg", first=50)  # 2 of another format
    return root


@pytest.fixture(scope="module")
def shards(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    prepare_shards(folder_config(images), out, ShardPlan(per_shard=4))
    return out


def shard_config(out: Path | str, **changes) -> DataConfig:
    return dataclasses.replace(folder_config(out, dataset="shards"), **changes)


def epoch_samples(loader, epoch: int) -> list[tuple[bytes, int]]:
    epoch_batch_sampler(loader).set_epoch(epoch)
    return [
        (image.numpy().tobytes(), int(label))
        for images, labels in loader
        for image, label in zip(images, labels, strict=True)
    ]


def test_shards_give_the_folders_samples_pixel_for_pixel(images, shards):
    folder = build_datasets(folder_config(images, batch_size=13), seed=7)
    streamed = build_datasets(shard_config(shards, batch_size=13), seed=7)
    assert streamed.classes == folder.classes and len(streamed.train) == len(folder.train) == 26
    from_folder = build_loader(
        folder.train, folder_config(images, batch_size=13), train=True, seed=7
    )
    from_shards = build_loader(
        streamed.train, shard_config(shards, batch_size=13), train=True, seed=7
    )
    for epoch in (0, 1):  # randomly cropped and flipped, each image as the folder crops it
        expected = epoch_samples(from_folder, epoch)
        got = epoch_samples(from_shards, epoch)
        assert len(got) == 26 and sorted(got) == sorted(expected)
    assert epoch_samples(from_shards, 0) != epoch_samples(from_shards, 1)
    # Validation: the same images in the same order, batch for batch.
    val_folder = build_loader(folder.val, folder_config(images), train=False, seed=7)
    val_shards = build_loader(streamed.val, shard_config(shards), train=False, seed=7)
    for (a, x), (b, y) in itertools.zip_longest(val_folder, val_shards):
        assert torch.equal(a, b) and torch.equal(x, y)


def keys(batches: ShardBatches, epoch: int, start_batch: int = 0) -> list[list[int]]:
    batches.set_epoch(epoch, start_batch)
    return [[record[0] for _, record in batch] for batch in batches]


def train_batches(shards: Path, rank: int = 0, world: int = 1, seed: int = 7, **changes):
    streamed = build_datasets(shard_config(shards, **changes), seed=seed)
    return ShardBatches(streamed.train, shard_config(shards, **changes), True, seed, rank, world)


def test_the_order_comes_from_seed_and_epoch_alone(shards):
    batches = train_batches(shards)
    first = keys(batches, 0)
    assert keys(train_batches(shards), 0) == first  # a new loader, the same order
    assert keys(batches, 1) != first
    assert keys(train_batches(shards, seed=8), 0) != first
    assert sorted(sum(keys(train_batches(shards, batch_size=26), 1), [])) == list(range(26))


def test_each_process_reads_its_own_shards_and_together_all(shards):
    shard_count = len(read_index(str(shards))["splits"]["train"])  # 7: 4 samples each, then 2
    for world in (2, 3, 4):
        ranks = [train_batches(shards, rank, world) for rank in range(world)]
        for epoch in (0, 1):
            owned = [ranks[rank].shard_order(epoch) for rank in range(world)]
            assert sorted(sum(owned, [])) == list(range(shard_count))  # disjoint, covering
            assert len({batches.batches_per_epoch for batches in ranks}) == 1  # same steps
            for batches, numbers in zip(ranks, owned, strict=True):
                own = {record[0] for record in batches.stream.records(numbers)}
                seen = sum(keys(batches, epoch), [])
                assert set(seen) <= own  # only samples of its own shards
                # ceil(26 / world) samples, in batches of 8 (a ragged last one dropped)
                assert len(seen) == (batches.length // 8 * 8 or batches.length)
                if len(own) <= len(seen):  # all of them, some again where too few
                    assert set(seen) == own
    with pytest.raises(ConfigError, match="cannot give each of the 8 processes its own"):
        train_batches(shards, 0, 8)


def test_resume_inside_an_epoch_gives_the_remaining_batches(shards):
    straight = keys(train_batches(shards, batch_size=5), 2)
    assert keys(train_batches(shards, batch_size=5), 2, start_batch=3) == straight[3:]
    # Decoded and augmented: the same tensors, whatever the number of workers.
    streamed = build_datasets(shard_config(shards, batch_size=5), seed=7)
    uninterrupted = build_loader(
        streamed.train, shard_config(shards, batch_size=5), train=True, seed=7
    )
    resumed = build_loader(
        streamed.train, shard_config(shards, batch_size=5, num_workers=2), train=True, seed=7
    )
    epoch_batch_sampler(uninterrupted).set_epoch(2)
    epoch_batch_sampler(resumed).set_epoch(2, start_batch=3)
    expected = list(uninterrupted)[3:]
    got = list(resumed)
    assert len(got) == len(expected) == 2
    for (a, x), (b, y) in zip(expected, got, strict=True):
        assert torch.equal(a, b) and torch.equal(x, y)


def test_shards_from_a_url_or_a_pipe(shards, monkeypatch):
    monkeypatch.setattr(pipe_roots, "_given", set())
    for root in (f"file://{shards}", "pipe:cat " + str(shards) + "/{name}"):
        load_config([], [f"data.root={root}"])  # given on the command line
        streamed = build_datasets(shard_config(root), seed=7)
        assert streamed.train.root == root
        loader = build_loader(streamed.val, shard_config(root), train=False, seed=7)
        assert sum(len(labels) for _, labels in loader) == 6


def test_a_pipe_root_from_a_checkpoint_runs_no_command(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(pipe_roots, "_given", set())
    marker = tmp_path / "ran"
    root = f"pipe:touch {marker}; cat {shards}/" + "{name}"
    saved = to_dict(load_config([], []))
    saved["data"].update(dataset="shards", root=root)
    cfg = load_saved_config(saved, [])  # what evaluate.py and a resume read
    with pytest.raises(DataError, match="shell command read from a checkpoint"):
        build_datasets(cfg.data, seed=7)
    assert not marker.exists()
    given = load_config([], ["data.dataset=shards", f"data.root={root}"])  # the user's own
    build_datasets(given.data, seed=7)
    assert marker.exists()


def test_bad_destinations_are_refused_in_one_line(images, tmp_path):
    plan = ShardPlan(per_shard=4)
    with pytest.raises(DataError, match="inside DATA_ROOT"):
        prepare_shards(folder_config(images), images / "shards", plan)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds notes.txt, which prepare_shards.py did not"):
        prepare_shards(folder_config(images), tmp_path, plan)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    foreign = tmp_path / "other-tools-shards"
    foreign.mkdir()
    (foreign / "train-000000.tar").write_bytes(b"not ours")
    with pytest.raises(DataError, match="shards of another tool"):
        prepare_shards(folder_config(images), foreign, plan)
    assert (foreign / "train-000000.tar").read_bytes() == b"not ours"


def test_incomplete_damaged_or_foreign_shards_are_refused(shards, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for entry in shards.iterdir():
        (copy / entry.name).write_bytes(entry.read_bytes())
    damaged = copy / "train-000001.tar"
    data = bytearray(damaged.read_bytes())
    data[700] ^= 1  # in the first image's bytes
    damaged.write_bytes(bytes(data))
    streamed = build_datasets(shard_config(copy), seed=7)
    loader = build_loader(streamed.train, shard_config(copy, batch_size=26), train=True, seed=7)
    with pytest.raises(DataError, match="train-000001.tar differs from the index"):
        list(loader)
    index = json.loads((shards / SHARDS_FILE).read_text())
    for sides, problem in (
        ({"100000": 10**12}, "sizes of 1000000000000 images, more than"),
        ({"\u00b2": 1}, "something other than counts"),  # "²".isdigit() is true
    ):
        survey = {**index["survey"], "shorter_sides": sides}  # a list of 10**12 sides: no
        (copy / SHARDS_FILE).write_text(json.dumps({**index, "survey": survey}))
        with pytest.raises(DataError, match=problem):
            build_datasets(shard_config(copy), seed=7)
    (copy / SHARDS_FILE).unlink()
    with pytest.raises(DataError, match="incomplete shards, rerun prepare_shards.py"):
        build_datasets(shard_config(copy), seed=7)
    with pytest.raises(DataError, match="holds no shards"):
        build_datasets(shard_config(tmp_path), seed=7)
    (copy / SHARDS_FILE).write_text('{"format": "torch-template image shards", "version": 9}')
    with pytest.raises(DataError, match="format version 9, newer than this project reads"):
        build_datasets(shard_config(copy), seed=7)
    with pytest.raises(ConfigError, match="data.cache=True does not apply"):
        build_datasets(shard_config(shards, cache=True), seed=7)
    message = missing_package(ModuleNotFoundError("no webdataset", name="webdataset"))
    assert message is not None and 'pip install -e ".[shards]"' in message


@pytest.mark.slow
def test_a_killed_write_leaves_nothing_that_training_uses(tmp_path):
    root, out = tmp_path / "images", tmp_path / "out"
    write_images(root, {"ant": 150, "bee": 150}, size=16)
    command = [sys.executable, "prepare_shards.py", str(root), str(out), "--per-shard", "1"]
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=_subprocess_env(), stdout=subprocess.PIPE, text=True
    )
    wait_for_file(out / "train-000003.tar", process, timeout=60)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / SHARDS_FILE).exists()
    with pytest.raises(DataError, match="incomplete shards, rerun prepare_shards.py"):
        build_datasets(shard_config(out), seed=7)
    # Run again: the leftovers are replaced or removed, and the shards train.
    prepare_shards(folder_config(root), out, ShardPlan(per_shard=100))
    assert sorted(path.name for path in out.iterdir()) == [
        "shards.json",
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
        "val-000000.tar",
    ]
    assert len(build_datasets(shard_config(out), seed=7).train) == 240
