"""Decoded shards (prepare_shards.py --decoded N): the folder's samples pixel for pixel,
the settings they fix, and the one-line refusals of settings, indexes and samples that do
not fit them."""

import dataclasses
import io
import itertools
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import PROJECT_ROOT, _subprocess_env, write_images
from test_shards import CLASSES, STATS, epoch_samples, folder_config

from {{ cookiecutter.package_name }}.config import ConfigError
from {{ cookiecutter.package_name }}.data import (
    DataError,
    build_datasets,
    build_loader,
    epoch_batch_sampler,
)
from {{ cookiecutter.package_name }}.data.decoded_shards import decoded_settings
from {{ cookiecutter.package_name }}.data.shard_index import SHARDS_FILE, read_index
from {{ cookiecutter.package_name }}.data.shard_writer import Decoding, ShardPlan, prepare_shards
from {{ cookiecutter.package_name }}.files import file_sha256

pytest.importorskip("webdataset", reason="the [shards] extra (webdataset) is not installed")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Square images (the folder's random crops then range over the whole image, as the
    decoded squares' do), of two sizes and formats: 26 training and 6 validation images."""
    root = tmp_path_factory.mktemp("images")
    write_images(root, CLASSES, size=16)
    write_images(root, {"ant": 2}, size=20, suffix=".jpg", first=50)
    return root


@pytest.fixture(scope="module")
def decoded(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("decoded") / "out"
    prepare_shards(folder_config(images), out, ShardPlan(per_shard=5), Decoding(12))
    return out


def decoded_config(out: Path, **changes):
    """The shards' config, with the settings they fix left null (as a user writes it)."""
    settings = {"dataset": "shards", "image_size": None, **changes}
    return dataclasses.replace(folder_config(out), **settings)


def test_decoded_shards_hold_npy_files_under_format_version_2(decoded):
    index = json.loads((decoded / SHARDS_FILE).read_text())
    assert index["version"] == 2
    assert index["decoded"] == {  # side: ceil(12 * 1.14)
        "image_size": 12,
        "resize": None,
        "interpolation": "bilinear",
        "side": 14,
    }
    with tarfile.open(decoded / "train-000000.tar") as shard:
        assert {Path(name).suffix for name in shard.getnames()} == {".cls", ".npy"}


@pytest.mark.parametrize(
    ("augment", "mode"),
    [
        (dict(random_crop=True, flip=True), "RGB"),
        (dict(random_crop=False, flip=True), "RGB"),
        (dict(random_crop=True, flip=False), "RGB"),
        (dict(random_crop=True, flip=True), "L"),
    ],
)
def test_decoded_shards_give_the_folders_samples_pixel_for_pixel(tmp_path, augment, mode):
    images = tmp_path / "images"
    write_images(images, CLASSES, size=16, mode=mode)
    write_images(images, {"ant": 2}, size=20, suffix=".jpg", first=50, mode=mode)
    decoded = tmp_path / "decoded"
    prepare_shards(folder_config(images), decoded, ShardPlan(per_shard=5), Decoding(12))
    stats = dict(mean=[0.5], std=[0.25]) if mode == "L" else {}
    settings = dict(batch_size=13, **augment, **stats)
    folder = build_datasets(folder_config(images, **settings), seed=7)
    streamed = build_datasets(decoded_config(decoded, **settings), seed=7)
    assert streamed.chosen["image_size"] == 12 and streamed.chosen["interpolation"] == "bilinear"
    assert len(streamed.train) == len(folder.train) == 26
    assert streamed.in_channels == folder.in_channels == (1 if mode == "L" else 3)
    from_folder = build_loader(folder.train, folder_config(images, **settings), train=True, seed=7)
    shards_settings = folder_config(decoded, dataset="shards", **settings)
    from_shards = build_loader(streamed.train, shards_settings, train=True, seed=7)
    for epoch in (0, 1):  # cropped and flipped as asked, each image as the folder does it
        expected = epoch_samples(from_folder, epoch)
        got = epoch_samples(from_shards, epoch)
        assert len(got) == 26 and sorted(got) == sorted(expected)
    assert epoch_samples(from_shards, 0) != epoch_samples(from_shards, 1)
    # Validation: the same images in the same order, batch for batch.
    val_folder = build_loader(folder.val, folder_config(images, **stats), train=False, seed=7)
    val_shards = build_loader(
        streamed.val, folder_config(decoded, dataset="shards", **stats), train=False, seed=7
    )
    for (a, x), (b, y) in itertools.zip_longest(val_folder, val_shards):
        assert torch.equal(a, b) and torch.equal(x, y)


def test_a_resumed_epoch_gives_the_remaining_batches(decoded):
    streamed = build_datasets(decoded_config(decoded, batch_size=5), seed=7)
    loader = build_loader(
        streamed.train, folder_config(decoded, dataset="shards", batch_size=5), train=True, seed=7
    )
    sampler = epoch_batch_sampler(loader)
    sampler.set_epoch(3)
    whole = [(images.numpy().tobytes(), labels.tolist()) for images, labels in loader]
    sampler.set_epoch(3, start_batch=2)
    rest = [(images.numpy().tobytes(), labels.tolist()) for images, labels in loader]
    assert len(whole) == 5 and rest == whole[2:]


def test_decoded_shards_statistics_equal_the_folders_centre_crops(images, decoded):
    computed = dict(mean=None, std=None)
    folder = build_datasets(folder_config(images, **computed), seed=3)
    streamed = build_datasets(decoded_config(decoded, **computed), seed=3)
    # The first 500 training images in shard order are all 26 here, as for the folder.
    assert streamed.mean == pytest.approx(folder.mean, abs=1e-6)
    assert streamed.std == pytest.approx(folder.std, abs=1e-6)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (dict(image_size=16), "data.image_size=16: the decoded shards at .* write them again "),
        (dict(resize=20), "data.resize=20: .* decoded with data.resize=14; .* --resize 20 "),
        (dict(resize=0), "data.resize=0: .* decoded with data.resize=14; .* --resize 0 "),
        (dict(interpolation="bicubic"), "data.interpolation=bicubic: .* --interpolation bicubic"),
        (dict(channels=1), "data.channels=1: the decoded shards at .* of 3 channels"),
        (dict(cache=True), "data.cache=True does not apply"),
    ],
)
def test_settings_the_shards_were_not_decoded_with_are_refused(decoded, changes, problem):
    with pytest.raises(ConfigError, match=problem):
        build_datasets(decoded_config(decoded, **changes), seed=3)


def test_settings_equal_to_the_shards_are_accepted(decoded):
    same = dict(image_size=12, resize=14, interpolation="bilinear", channels=3)
    assert len(build_datasets(decoded_config(decoded, **same), seed=3).train) == 26


def test_no_resize_and_a_resize_to_the_same_side_are_told_apart(images, tmp_path):
    unresized = tmp_path / "unresized"
    prepare_shards(folder_config(images), unresized, ShardPlan(per_shard=50), Decoding(12, 0))
    assert build_datasets(decoded_config(unresized), seed=3).chosen["resize"] == 0
    with pytest.raises(ConfigError, match="data.resize=12: .* decoded with data.resize=0"):
        build_datasets(decoded_config(unresized, resize=12), seed=3)


def test_pretrained_weights_resampled_otherwise_are_said(decoded, project_log):
    weights = SimpleNamespace(interpolation="bicubic")
    fixed = decoded_settings(decoded_config(decoded), read_index(str(decoded))["decoded"], weights)
    assert fixed["interpolation"] == "bilinear"
    assert "write them again with --interpolation bicubic to match" in project_log.text


def copy_of(shards: Path, to: Path) -> Path:
    to.mkdir()
    for entry in shards.iterdir():
        (to / entry.name).write_bytes(entry.read_bytes())
    return to


def rewrite_first_sample(shards: Path, payload: bytes) -> None:
    """Replace the first training sample's .npy with `payload`, the index updated to the
    new shard's size and checksum (so only the sample's own check can catch it)."""
    path = shards / "train-000000.tar"
    with tarfile.open(path) as shard:
        members = [(member, shard.extractfile(member).read()) for member in shard.getmembers()]
    npy = next(i for i, (member, _) in enumerate(members) if member.name.endswith(".npy"))
    members[npy] = (members[npy][0], payload)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as shard:
        for member, data in members:
            member.size = len(data)
            shard.addfile(member, io.BytesIO(data))
    index = json.loads((shards / SHARDS_FILE).read_text())
    entry = index["splits"]["train"][0]
    entry.update(bytes=path.stat().st_size, sha256=file_sha256(path))
    (shards / SHARDS_FILE).write_text(json.dumps(index))


class LeavesAMark:
    """Unpickled, it creates the file `path` (what a crafted shard's code would do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.mark.parametrize("kind", ["another type", "another size", "a pickle"])
def test_a_sample_that_is_not_the_indexed_array_is_refused_in_one_line(decoded, tmp_path, kind):
    mark = tmp_path / "unpickled"
    array = {
        "another type": np.zeros((3, 14, 14), dtype=np.float32),
        "another size": np.zeros((3, 13, 13), dtype=np.uint8),
        "a pickle": np.array([LeavesAMark(mark)], dtype=object),
    }[kind]
    copy = copy_of(decoded, tmp_path / "copy")
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    rewrite_first_sample(copy, buffer.getvalue())
    streamed = build_datasets(decoded_config(copy, batch_size=26), seed=3)
    loader = build_loader(
        streamed.train, folder_config(copy, dataset="shards", batch_size=26), train=True, seed=3
    )
    with pytest.raises(DataError, match=r"is not the uint8 \[3, 14, 14\] array its index says"):
        list(loader)
    assert not mark.exists()  # nothing in the sample was unpickled


def test_an_index_whose_decoding_does_not_hold_is_refused(decoded, tmp_path):
    copy = copy_of(decoded, tmp_path / "copy")
    index = json.loads((decoded / SHARDS_FILE).read_text())
    for changed, problem in (
        ({"version": 1}, "which format version 1 does not have"),
        ({"decoded": {**index["decoded"], "side": 10}}, "side does not follow from their"),
        ({"decoded": {**index["decoded"], "side": 40}}, "side does not follow from their"),
        ({"decoded": {**index["decoded"], "resize": 0}}, "side does not follow from their"),
        ({"decoded": {**index["decoded"], "resize": -1}}, "resize is not a size"),
        ({"decoded": {**index["decoded"], "image_size": 5000}}, "is not a number from 8 to"),
        ({"decoded": {**index["decoded"], "interpolation": "lanczos"}}, "interpolation is not"),
        ({"decoded": [12]}, "decoding settings are not a record"),
    ):
        (copy / SHARDS_FILE).write_text(json.dumps({**index, **changed}))
        with pytest.raises(DataError, match=problem):
            build_datasets(decoded_config(copy), seed=3)


def test_shards_of_files_keep_the_first_format_version(images, tmp_path):
    prepare_shards(folder_config(images), tmp_path / "files", ShardPlan(per_shard=50))
    index = json.loads((tmp_path / "files" / SHARDS_FILE).read_text())
    assert index["version"] == 1 and "decoded" not in index


def run_prepare(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "prepare_shards.py", *arguments]
    return subprocess.run(
        command, cwd=PROJECT_ROOT, env=_subprocess_env(), capture_output=True, text=True
    )


def test_prepare_shards_decoded_options(images, tmp_path):
    done = run_prepare(str(images), str(tmp_path / "out"), "--decoded", "16", "--resize", "0")
    assert done.returncode == 0, done.stderr
    index = json.loads((tmp_path / "out" / SHARDS_FILE).read_text())
    assert index["decoded"] == {
        "image_size": 16,
        "resize": 0,
        "interpolation": "bilinear",
        "side": 16,
    }
    for arguments, problem in (
        (["--resize", "20"], "--resize and --interpolation apply with --decoded N only"),
        (["--decoded", "4"], "argument --decoded: invalid at_least_8 value: '4'"),
        (["--decoded", "32", "--resize", "20"], "--resize 20 is smaller than --decoded 32"),
        (["--decoded", "8", "--resize", "5000"], "squares of 5000 px, more than the 4096"),
        (["--decoded", "17", "--resize", "0"], "smaller than --decoded 17 with --resize 0"),
    ):
        done = run_prepare(str(images), str(tmp_path / "other"), *arguments)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and problem in errors[0], done.stderr
    assert not (tmp_path / "other" / SHARDS_FILE).exists()


def test_training_on_decoded_shards_records_the_settings_they_fixed(decoded, tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "train.py",
        "data.dataset=shards",
        f"data.root={decoded}",
        "train.epochs=1",
        f"run.dir={run_dir}",
        "data.num_workers=0",
        *(f"data.{key}={value}" for key, value in STATS.items()),
    ]
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, env=_subprocess_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "auto: data.image_size=12 (the decoded shards at" in done.stdout + done.stderr
    assert "every image is decoded in the training process" not in done.stdout + done.stderr
    saved = (run_dir / "config.yaml").read_text()
    assert "image_size: 12" in saved and "interpolation: bilinear" in saved
