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

import numpy as np
import pytest
import torch
from conftest import PROJECT_ROOT, _subprocess_env, write_images
from test_shards import CLASSES, STATS, epoch_samples, folder_config

from {{ cookiecutter.package_name }}.config import ConfigError
from {{ cookiecutter.package_name }}.data import DataError, build_datasets, build_loader
from {{ cookiecutter.package_name }}.data.shard_index import SHARDS_FILE
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


def test_decoded_shards_give_the_folders_samples_pixel_for_pixel(images, decoded):
    index = json.loads((decoded / SHARDS_FILE).read_text())
    assert index["version"] == 2 and index["decoded"]["side"] == 14  # ceil(12 * 1.14)
    with tarfile.open(decoded / "train-000000.tar") as shard:
        assert {Path(name).suffix for name in shard.getnames()} == {".cls", ".npy"}
    folder = build_datasets(folder_config(images, batch_size=13), seed=7)
    streamed = build_datasets(decoded_config(decoded, batch_size=13), seed=7)
    assert streamed.chosen["image_size"] == 12 and streamed.chosen["interpolation"] == "bilinear"
    assert len(streamed.train) == len(folder.train) == 26
    from_folder = build_loader(
        folder.train, folder_config(images, batch_size=13), train=True, seed=7
    )
    shards_settings = folder_config(decoded, dataset="shards", batch_size=13)
    from_shards = build_loader(streamed.train, shards_settings, train=True, seed=7)
    for epoch in (0, 1):  # randomly cropped and flipped, each image as the folder crops it
        expected = epoch_samples(from_folder, epoch)
        got = epoch_samples(from_shards, epoch)
        assert len(got) == 26 and sorted(got) == sorted(expected)
    assert epoch_samples(from_shards, 0) != epoch_samples(from_shards, 1)
    # Validation: the same images in the same order, batch for batch.
    val_folder = build_loader(folder.val, folder_config(images), train=False, seed=7)
    val_shards = build_loader(
        streamed.val, folder_config(decoded, dataset="shards"), train=False, seed=7
    )
    for (a, x), (b, y) in itertools.zip_longest(val_folder, val_shards):
        assert torch.equal(a, b) and torch.equal(x, y)


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
        (dict(image_size=16), "data.image_size=16: the decoded shards at .* were decoded with "),
        (dict(resize=20), "data.resize=20: the decoded shards at .* hold squares of 14 px"),
        (dict(interpolation="bicubic"), "data.interpolation=bicubic: .* decoded with"),
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


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((3, 14, 14), dtype=np.float32),  # another type
        np.zeros((3, 13, 13), dtype=np.uint8),  # another size
        np.array([{"code": "run"}], dtype=object),  # a pickle: never loaded
    ],
)
def test_a_sample_that_is_not_the_indexed_array_is_refused_in_one_line(decoded, tmp_path, array):
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


def test_an_index_whose_decoding_does_not_hold_is_refused(decoded, tmp_path):
    copy = copy_of(decoded, tmp_path / "copy")
    index = json.loads((decoded / SHARDS_FILE).read_text())
    for changed, problem in (
        ({"version": 1}, "which format version 1 does not have"),
        ({"decoded": {**index["decoded"], "side": 10}}, "side is not at least their image size"),
        ({"decoded": {**index["decoded"], "resize": 99}}, "resize is not their side"),
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
    assert index["decoded"] == {"image_size": 16, "resize": 0, "interpolation": None, "side": 16}
    for arguments, problem in (
        (["--resize", "20"], "--resize and --interpolation apply with --decoded N only"),
        (["--decoded", "4"], "argument --decoded: invalid at_least_8 value: '4'"),
        (["--decoded", "32", "--resize", "20"], "--resize 20 is smaller than --decoded 32"),
    ):
        done = run_prepare(str(images), str(tmp_path / "other"), *arguments)
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and problem in lines[0], done.stderr
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
        *(f"data.{key}={value}" for key, value in STATS.items()),
    ]
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, env=_subprocess_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "auto: data.image_size=12 (the decoded shards at" in done.stdout + done.stderr
    saved = (run_dir / "config.yaml").read_text()
    assert "image_size: 12" in saved and "interpolation: bilinear" in saved
