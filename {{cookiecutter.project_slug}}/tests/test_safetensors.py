"""Model weights as .safetensors: written by a run, equal to the checkpoint, checked on load,
refused when they do not belong to their checkpoint, pruned with it, exported."""

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from {{ cookiecutter.package_name }}.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    load_weights,
    write_weights,
)
from {{ cookiecutter.package_name }}.config import ModelConfig
from {{ cookiecutter.package_name }}.exported import export_weights
from {{ cookiecutter.package_name }}.model import build_model
from {{ cookiecutter.package_name }}.train import main


def paired_weights(checkpoint: Path) -> Path:
    """The .safetensors beside the step file that `checkpoint` is (or links to)."""
    return Path(os.path.realpath(checkpoint)).with_suffix(".safetensors")


def test_run_writes_safetensors_equal_to_the_checkpoint(make_config, tmp_path):
    assert main(make_config()) == 0
    folder = tmp_path / "run" / "checkpoints"
    for name in ("last", "best"):
        weights = load_weights(paired_weights(folder / f"{name}.pt"))
        checkpoint = load_checkpoint(folder / f"{name}.pt")["model"]
        assert set(weights) == set(checkpoint)
        for key, tensor in checkpoint.items():
            assert weights[key].dtype == tensor.dtype, key
            assert torch.equal(weights[key], tensor), key
        from_checkpoint = load_weights(folder / f"{name}.pt")
        assert torch.equal(from_checkpoint["head.weight"], weights["head.weight"])


def test_safetensors_files_have_the_mode_of_the_checkpoints(make_config, tmp_path):
    # The library writes through a mkstemp file (0600); the .pt beside it follows the umask.
    earlier = os.umask(0o022)
    try:
        assert main(make_config()) == 0
    finally:
        os.umask(earlier)
    step = Path(os.path.realpath(tmp_path / "run" / "checkpoints" / "last.pt"))
    assert step.stat().st_mode & 0o777 == 0o644
    assert paired_weights(step).stat().st_mode & 0o777 == 0o644


def test_mid_epoch_stop_also_writes_safetensors(make_config, tmp_path):
    assert main(make_config("train.max_steps=2")) == 0
    folder = tmp_path / "run" / "checkpoints"
    weights = load_weights(paired_weights(folder / "last.pt"))
    checkpoint = load_checkpoint(folder / "last.pt")["model"]
    assert all(torch.equal(weights[key], tensor) for key, tensor in checkpoint.items())


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_malformed_safetensors_raises_checkpoint_error_naming_it(make_config, tmp_path, damage):
    assert main(make_config("train.max_steps=1")) == 0
    good = paired_weights(tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    content = {
        "garbage": b"this is not a safetensors file" * 10,
        "truncated": good[: len(good) // 2],
        "empty": b"",
    }[damage]
    path = tmp_path / f"{damage}.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        load_weights(path)
    assert str(path) in str(error.value)


@pytest.fixture
def two_checkpoints(make_config, tmp_path):
    """A run saved at steps 2 and 4: its checkpoints folder."""
    assert main(make_config("run.save_every_steps=2", "train.max_steps=4")) == 0
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(path.name for path in folder.glob("step-*.safetensors")) == [
        "step-00000002.safetensors",
        "step-00000004.safetensors",
    ]
    return folder


@pytest.mark.parametrize("damage", ["garbage", "flipped_byte", "from_another_step", "missing"])
def test_weights_not_matching_their_checkpoint_are_refused_naming_them(two_checkpoints, damage):
    folder = two_checkpoints
    weights = folder / "step-00000004.safetensors"
    content = weights.read_bytes()
    # Written in place: whatever links to this file sees the change too.
    if damage == "garbage":
        weights.write_bytes(b"this is not a safetensors file" * 10)
    elif damage == "flipped_byte":
        weights.write_bytes(content[:-10] + bytes([content[-10] ^ 0x01]) + content[-9:])
    elif damage == "from_another_step":  # a whole, valid file: of step 2
        shutil.copyfile(folder / "step-00000002.safetensors", weights)
    else:
        weights.unlink()
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(folder / "step-00000004.pt")
    assert weights.name in str(error.value)
    if damage != "missing":
        assert str(weights) in str(error.value) and "SHA-256" in str(error.value)
    # A resume falls back to the previous step, whose weights are whole.
    path, checkpoint = CheckpointManager(folder, is_main=False).load_newest_valid()
    assert path == folder / "step-00000002.pt" and checkpoint["progress"]["global_step"] == 2
    expected = load_weights(folder / "step-00000002.safetensors")
    assert all(torch.equal(checkpoint["model"][key], value) for key, value in expected.items())


def test_checkpoint_records_the_sha256_of_its_weights_file(two_checkpoints):
    # The weights live in step-00000004.safetensors, whose SHA-256 the .pt records.
    raw = torch.load(two_checkpoints / "step-00000004.pt", map_location="cpu", weights_only=True)
    assert raw["model"] is None
    weights = two_checkpoints / "step-00000004.safetensors"
    assert raw["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_keep_last_prunes_the_weights_files_with_their_checkpoints(tmp_path):
    model = build_model(ModelConfig(width=8), num_classes=10, in_channels=3)
    manager = CheckpointManager(tmp_path, is_main=True, keep_last=2)
    for step in range(1, 6):
        state = {"progress": {"global_step": step}, "model": model.state_dict()}
        manager.save(state, model, is_best=step == 2)
    steps = [path.name for path in manager.step_files()]
    suffixes = (".pt", ".pt.sha256", ".safetensors")
    names = {path.name for path in tmp_path.iterdir()}
    kept = {name.removesuffix(".pt") for name in steps}
    assert {f"{stem}{suffix}" for stem in kept for suffix in suffixes} <= names
    assert {name.split(".")[0] for name in names} <= kept | {"last", "best"}, names


def test_full_disk_while_writing_safetensors_keeps_the_last_checkpoint(
    two_checkpoints, monkeypatch
):
    from safetensors import SafetensorError

    folder = two_checkpoints
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    checkpoint = load_checkpoint(folder / "last.pt")
    model = build_model(ModelConfig(width=8), num_classes=10, in_channels=3)
    model.load_state_dict(checkpoint["model"])
    state = {**checkpoint, "progress": {**checkpoint["progress"], "global_step": 6}}

    def full_disk_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as file:
            file.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk_save_file)
    with pytest.raises(CheckpointError) as error:
        CheckpointManager(folder, is_main=True).save(state, model)
    assert "step-00000006" in str(error.value) and "No space left" in str(error.value)
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert load_checkpoint(folder / "last.pt")["progress"]["global_step"] == 4


def test_export_to_safetensors_equals_the_checkpoint(two_checkpoints, tmp_path):
    output = export_weights(two_checkpoints / "last.pt", tmp_path / "out" / "model.safetensors")
    exported = load_weights(output)
    expected = load_checkpoint(two_checkpoints / "last.pt")["model"]
    assert set(exported) == set(expected)
    assert all(torch.equal(exported[key], value) for key, value in expected.items())


def test_temporary_file_of_the_safetensors_library_is_removed_at_start(two_checkpoints):
    """safetensors writes through a `.tmpXXXXXX` file of its own in the target folder (then
    renames it): a kill during that write leaves one, as large as the model."""
    folder = two_checkpoints
    before = sorted(path.name for path in folder.iterdir())
    orphan = folder / ".tmpJVfXS2"
    orphan.write_bytes(b"\x00" * 1000)
    CheckpointManager(folder, is_main=True)
    assert not orphan.exists()
    assert sorted(path.name for path in folder.iterdir()) == before


def test_without_the_safetensors_package_the_error_names_the_file_and_the_fix(
    two_checkpoints, tmp_path, monkeypatch
):
    existing = two_checkpoints / "step-00000004.safetensors"
    weights = load_weights(existing)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # as if not installed
    with pytest.raises(CheckpointError) as read_error:
        load_weights(existing)
    output = tmp_path / "model.safetensors"
    with pytest.raises(CheckpointError) as write_error:
        write_weights(weights, output)
    for path, error in ((existing, read_error), (output, write_error)):
        assert str(path) in str(error.value) and "pip install safetensors" in str(error.value)
    assert not output.exists()
