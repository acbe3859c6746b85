"""Checkpoints: round trip, step files and their SHA-256 sidecars, last/best links, pruning,
RNG states, prefixes, mismatches, corrupt and unsafe files, failed saves, export."""

import hashlib
import importlib.util
import io
import json
import logging
import os
import random
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same
from torch import nn

from {{ cookiecutter.package_name }}.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    load_model_state,
    load_weights,
    strip_prefixes,
)
from {{ cookiecutter.package_name }}.config import (
    ModelConfig,
    OptimConfig,
    SchedConfig,
    to_dict,
)
from {{ cookiecutter.package_name }}.engine import TrainState
from {{ cookiecutter.package_name }}.errors import describe
from {{ cookiecutter.package_name }}.exported import export_weights
from {{ cookiecutter.package_name }}.features import feature_module
from {{ cookiecutter.package_name }}.files import (
    atomic_path,
    atomic_symlink,
    atomic_write_text,
    file_sha256,
    staged_files,
)
from {{ cookiecutter.package_name }}.model import build_model
from {{ cookiecutter.package_name }}.optim import (
    build_optimizer,
    build_scheduler,
)
from {{ cookiecutter.package_name }}.saver import training_state
from {{ cookiecutter.package_name }}.seeding import rng_state, set_rng_state

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# For the tests of how a project generated without safetensors stores model weights and
# refuses .safetensors files; tests/test_safetensors.py covers the projects with it.
without_safetensors = pytest.mark.skipif(
    feature_module("safetensors_io") is not None, reason="this project has safetensors"
)


def small_model(num_classes: int = 10) -> nn.Module:
    return build_model(ModelConfig(width=8), num_classes=num_classes, in_channels=3)


def trained_state(small_config, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """A model and optimizer after two steps, packed by training_state."""
    torch.manual_seed(0)
    model = model if model is not None else small_model()
    optimizer = build_optimizer(OptimConfig(lr=0.01), model)
    scheduler = build_scheduler(SchedConfig(), optimizer, steps_per_epoch=4, total_steps=8)
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.arange(4))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    progress = TrainState(epoch=1, batch_in_epoch=2, global_step=6).as_dict()
    state = training_state(
        model, optimizer, scheduler, scaler, progress, to_dict(small_config), ["a", "b"]
    )
    return model, state


def test_save_and_load_round_trip(small_config, tmp_path):
    model, state = trained_state(small_config)
    folder = tmp_path / "checkpoints"
    manager = CheckpointManager(folder, is_main=True)
    path = manager.save(state, model)
    # Named after the global step; last.pt is (or points to) the same file; no best.pt.
    assert path == folder / "step-00000006.pt" and manager.latest() == path
    assert manager.candidates()[0] == path
    assert os.path.samefile(path, folder / "last.pt") and not (folder / "best.pt").exists()

    loaded = load_checkpoint(path)
    assert_same(state["model"], loaded["model"], "model")
    assert_same(state["optimizer"], loaded["optimizer"], "optimizer")
    assert loaded["scheduler"] == state["scheduler"]
    assert loaded["progress"] == state["progress"] and loaded["config"] == state["config"]
    assert loaded["classes"] == ["a", "b"]
    assert_same(state["model"], load_checkpoint(folder / "last.pt")["model"], "last")
    # The file holds plain types only: loadable without the project's code running.
    torch.load(path, map_location="cpu", weights_only=True)
    assert_same(model.state_dict(), load_weights(path), "weights")

    fresh = small_model()
    load_model_state(fresh, loaded["model"], path)
    inputs = torch.randn(2, 3, 16, 16)
    assert torch.equal(fresh.eval()(inputs), model.eval()(inputs))


@without_safetensors
def test_model_weights_are_stored_inside_the_checkpoint(small_config, tmp_path):
    model, state = trained_state(small_config)
    path = CheckpointManager(tmp_path, is_main=True).save(state, model)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert_same(state["model"], raw["model"], "model")
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["last.pt", "step-00000006.pt", "step-00000006.pt.sha256"]


def test_every_project_reads_safetensors_files_and_names_a_broken_one(small_config, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model, state = trained_state(small_config)
    weights = tmp_path / "model.safetensors"
    safetensors_torch.save_file(state["model"], str(weights))
    assert_same(state["model"], load_weights(weights), "weights")
    weights.write_bytes(b"{}")
    with pytest.raises(CheckpointError) as error:
        load_weights(weights)
    assert str(weights) in str(error.value) and "truncated or corrupt" in str(error.value)


@without_safetensors
def test_writing_a_safetensors_file_is_refused_naming_it_and_the_fix(small_config, tmp_path):
    model, state = trained_state(small_config)
    checkpoint = CheckpointManager(tmp_path / "checkpoints", is_main=True).save(state, model)
    output = tmp_path / "out" / "model.safetensors"
    with pytest.raises(CheckpointError) as error:
        export_weights(checkpoint, output)
    assert str(output) in str(error.value) and "use_safetensors=yes" in str(error.value)
    assert not output.parent.exists()


def test_a_checkpoint_keeping_its_weights_in_safetensors_loads_in_every_project(
    small_config, tmp_path
):
    """A checkpoint of a project generated with safetensors: its .pt holds no model weights
    but the SHA-256 of its step-<N>.safetensors. It loads wherever the package is installed;
    weights that do not match the recorded SHA-256 are refused, naming both files."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model, state = trained_state(small_config)
    path = tmp_path / "step-00000006.pt"
    weights = tmp_path / "step-00000006.safetensors"
    safetensors_torch.save_file(state["model"], str(weights))
    torch.save({**state, "model": None, "weights_sha256": file_sha256(weights)}, path)
    assert_same(state["model"], load_checkpoint(path)["model"], "paired weights")
    torch.save({**state, "model": None, "weights_sha256": "0" * 64}, path)
    for load in (load_checkpoint, load_weights):
        with pytest.raises(CheckpointError) as error:
            load(path)
        message = str(error.value)
        assert str(path.name) in message and "step-00000006.safetensors" in message, load.__name__
        assert "SHA-256 differs" in message, load.__name__


def test_sidecar_holds_the_sha256_in_sha256sum_format(small_config, tmp_path):
    model, state = trained_state(small_config)
    path = CheckpointManager(tmp_path, is_main=True).save(state, model)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar = tmp_path / "step-00000006.pt.sha256"
    assert sidecar.read_text(encoding="utf-8") == f"{digest}  step-00000006.pt\n"
    if shutil.which("sha256sum"):
        check = subprocess.run(
            ["sha256sum", "--check", sidecar.name], cwd=tmp_path, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr


def test_only_the_main_process_writes(small_config, tmp_path):
    model, state = trained_state(small_config)
    manager = CheckpointManager(tmp_path / "checkpoints", is_main=False)
    assert manager.save(state, model, is_best=True) == tmp_path / "checkpoints" / "step-00000006.pt"
    assert not (tmp_path / "checkpoints").exists()


class Wrapper(nn.Module):
    """Holds the model as DistributedDataParallel (`module`) or torch.compile (`_orig_mod`) do."""

    def __init__(self, model: nn.Module, attribute: str) -> None:
        super().__init__()
        setattr(self, attribute, model)
        self.attribute = attribute

    def forward(self, inputs):
        return getattr(self, self.attribute)(inputs)


def test_wrapped_model_is_saved_without_prefixes(small_config):
    wrapped = Wrapper(Wrapper(small_model(), "_orig_mod"), "module")
    assert any(key.startswith("module._orig_mod.") for key in wrapped.state_dict())
    _, state = trained_state(small_config, model=wrapped)
    assert set(state["model"]) == set(small_model().state_dict())


def draw_numbers() -> tuple:
    return (
        [random.random() for _ in range(3)],
        np.random.rand(3).tolist(),
        np.random.standard_normal(),
        torch.rand(3),
        torch.randn(2),
    )


def test_rng_states_restore_through_a_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's legacy state
    path = tmp_path / "rng.pt"
    torch.save(rng_state(), path)
    expected = draw_numbers()
    draw_numbers()  # move every generator on
    set_rng_state(torch.load(path, weights_only=True))
    again = draw_numbers()
    assert again[:3] == expected[:3]
    assert torch.equal(again[3], expected[3]) and torch.equal(again[4], expected[4])


def test_strip_prefixes_handles_wrappers_and_their_nesting():
    state = {
        "module.a": 1,
        "_orig_mod.b": 2,
        "module._orig_mod.c": 3,
        "_orig_mod.module.d": 4,
        "e": 5,
        "layer.module.f": 6,  # "module." inside a name is part of the name
    }
    assert strip_prefixes(state) == {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "layer.module.f": 6}


def test_load_model_state_accepts_prefixed_keys():
    source, target = small_model(), small_model()
    prefixed = {f"module._orig_mod.{key}": value for key, value in source.state_dict().items()}
    load_model_state(target, prefixed, "some.pt")
    assert_same(source.state_dict(), target.state_dict())


def test_wrong_class_count_names_the_key_and_both_shapes():
    ten, five = small_model(num_classes=10), small_model(num_classes=5)
    with pytest.raises(CheckpointError) as error:
        load_model_state(five, ten.state_dict(), "ten_classes.pt")
    message = str(error.value)
    assert "ten_classes.pt" in message and "head.weight" in message
    assert str(tuple(ten.head.weight.shape)) in message
    assert str(tuple(five.head.weight.shape)) in message


def test_missing_and_unexpected_keys_are_listed():
    state = small_model().state_dict()
    state["extra.weight"] = state.pop("head.bias")
    with pytest.raises(CheckpointError) as error:
        load_model_state(small_model(), state, "odd.pt")
    assert "head.bias" in str(error.value) and "extra.weight" in str(error.value)


@pytest.mark.parametrize(
    "damage", ["truncated", "flipped_byte", "random_bytes", "empty", "missing"]
)
def test_damaged_file_without_sidecar_raises_checkpoint_error_naming_it(
    small_config, tmp_path, damage
):
    """Without a .sha256 beside it (a copied file), the zip's own checksums catch damage."""
    model, state = trained_state(small_config)
    good = CheckpointManager(tmp_path / "checkpoints", is_main=True).save(state, model)
    path = tmp_path / f"{damage}.pt"
    content = good.read_bytes()
    if damage == "truncated":
        path.write_bytes(content[: len(content) // 2])
    elif damage == "flipped_byte":
        path.write_bytes(flip_a_tensor_byte(content))
    elif damage == "random_bytes":
        path.write_bytes(random.Random(0).randbytes(len(content)))
    elif damage == "empty":
        path.write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def flip_a_tensor_byte(content: bytes) -> bytes:
    """Flip one bit inside the data of the largest tensor stored in a torch zip file
    (neither torch nor safetensors notices such a change when loading)."""
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        largest = max(
            (info for info in archive.infolist() if "/data/" in info.filename),
            key=lambda info: info.file_size,
        )
        # Stored uncompressed: the data starts after the local header, name and extra field.
        header = content[largest.header_offset : largest.header_offset + 30]
        start = largest.header_offset + 30 + int.from_bytes(header[26:28], "little")
        start += int.from_bytes(header[28:30], "little")
    damaged = bytearray(content)
    damaged[start + largest.file_size // 2] ^= 0x01
    return bytes(damaged)


def test_file_without_model_weights_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="other.pt"):
        load_checkpoint(path)


def with_pickle(content: bytes, data_pkl: bytes) -> bytes:
    """The torch zip file `content` with its data.pkl replaced by `data_pkl` (the zip's
    checksums fit the new bytes: only the unpickler can tell)."""
    rewritten = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(content)) as source, zipfile.ZipFile(rewritten, "w") as out:
        for info in source.infolist():
            new = data_pkl if info.filename.endswith("/data.pkl") else source.read(info)
            out.writestr(info.filename, new)
    return rewritten.getvalue()


# Pickles torch's weights-only unpickler fails on each in its own way: a stack emptied
# (IndexError), a memo entry never set (KeyError), no STOP (EOFError), a bad argument
# (struct.error, UnpicklingError).
MALFORMED_PICKLES = [
    b"}q\x00(X\x01\x00\x00\x00aq\x01s.",
    b"s.",
    b"h\x05.",
    b"]q\x00e.",
    b"",
    b"\x80\x02}",
    b"\x80\x02K\x01K\x02b.",
    b"\x80\x02N\x85R.",
]


def test_a_malformed_pickle_inside_a_checkpoint_is_one_checkpoint_error(tmp_path):
    """Whatever the weights-only unpickler raises on a malformed data.pkl (it runs no
    code, so any failure means a corrupt file), each reader of torch files says so in
    one CheckpointError naming the file: every cut of a real data.pkl and the pickles above."""
    saved = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(2)}, "progress": {"step": 3}}, saved)
    with zipfile.ZipFile(saved) as archive:
        (real,) = [archive.read(name) for name in archive.namelist() if name.endswith("data.pkl")]
    path = tmp_path / "malformed.pt"
    for data_pkl in MALFORMED_PICKLES + [real[:cut] for cut in range(len(real))]:
        path.write_bytes(with_pickle(saved.getvalue(), data_pkl))
        for load in (load_checkpoint, load_weights):
            with pytest.raises(CheckpointError) as error:
                load(path)
            message = str(error.value)
            assert str(path) in message and "\n" not in message, (data_pkl, message)


class MakesSentinel:
    """Unpickling this object creates a folder: a stand-in for code run by a malicious file."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_malicious_pickle_is_refused_and_runs_no_code(tmp_path):
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "evil.pt"
    torch.save({"model": MakesSentinel(sentinel)}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)
    assert not sentinel.exists(), "loading the checkpoint ran code from it"

    # The payload is real: an unsafe load does run it.
    control = tmp_path / "control"
    torch.save({"model": MakesSentinel(control)}, path)
    torch.load(path, weights_only=False)
    assert control.exists()


def test_atomic_path_replaces_the_file_on_success(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    with atomic_path(path) as temporary:
        assert temporary.parent == path.parent and temporary != path
        temporary.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # not replaced before the block ends
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(path) as temporary:
            temporary.write_bytes(b"half of the n")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"], "a temporary file was left"


@pytest.fixture
def umask_027():
    """The process's umask set to 027 for one test (a group may read, others nothing)."""
    earlier = os.umask(0o027)
    yield
    os.umask(earlier)


def write_as_a_library_does(target: Path, content: bytes) -> None:
    """Write `target` as the safetensors library does: through mkstemp (mode 0600),
    renamed into place."""
    handle, name = tempfile.mkstemp(dir=target.parent)
    with os.fdopen(handle, "wb") as file:
        file.write(content)
    os.replace(name, target)


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_files_written_through_a_private_temporary_follow_the_umask(tmp_path, umask_027):
    # safetensors files came out 0600 beside .pt files of 0644: unreadable to the group.
    with atomic_path(tmp_path / "weights.bin") as temporary:
        write_as_a_library_does(temporary, b"weights")
    with staged_files(tmp_path / "export") as staging:
        write_as_a_library_does(staging / "model.bin", b"weights")
        (staging / "card.json").write_text("{}", encoding="utf-8")
    with atomic_path(tmp_path / "plain.txt") as temporary:
        temporary.write_text("written with open()", encoding="utf-8")

    for path in (tmp_path / "weights.bin", tmp_path / "export" / "model.bin"):
        assert stat_mode(path) == 0o640, path
    assert stat_mode(tmp_path / "export" / "card.json") == 0o640
    assert stat_mode(tmp_path / "plain.txt") == 0o640


def test_atomic_write_text_replaces_the_file(tmp_path):
    path = tmp_path / "note.txt"
    path.write_text("old", encoding="utf-8")
    atomic_write_text(path, "new ✓\n")
    assert path.read_text(encoding="utf-8") == "new ✓\n"
    assert [p.name for p in tmp_path.iterdir()] == ["note.txt"]


def test_an_os_error_of_an_atomic_write_names_the_file_not_the_temporary_one(tmp_path):
    path = tmp_path / "missing folder" / "note.txt"
    with pytest.raises(FileNotFoundError) as raised:
        atomic_write_text(path, "text")
    assert raised.value.filename == str(path)
    assert f"{path} does not exist" in describe(raised.value, "pick another place").message
    folder = tmp_path / "a folder"  # the rename onto it fails: a folder where a file goes
    (folder / "inside").mkdir(parents=True)
    with pytest.raises(OSError) as raised:
        atomic_write_text(folder, "text")
    assert (raised.value.filename, raised.value.filename2) == (str(folder), None)
    assert describe(raised.value, "pick another place").message.startswith(f"{folder} is a")


def test_atomic_symlink_switches_a_link_in_one_rename(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    link = tmp_path / "latest"
    # A temporary link left by a killed process with our id is no obstacle.
    (tmp_path / f".latest.{os.getpid()}.tmp").symlink_to("a")
    atomic_symlink(link, "a", target_is_directory=True)
    assert os.readlink(link) == "a"
    atomic_symlink(link, "b", target_is_directory=True)
    assert os.readlink(link) == "b" and os.path.samefile(link, tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "latest"]


def with_step(state: dict, model: nn.Module, step: int) -> dict:
    """`state` as at global step `step`, the model's head bias set to `step` to tell them apart."""
    with torch.no_grad():
        model.head.bias.fill_(step)
    progress = {**state["progress"], "global_step": step}
    return {**state, "model": model.state_dict(), "progress": progress}


def folder_snapshot(folder: Path) -> dict:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def full_disk_torch_save(obj, file, *args, **kwargs):
    """torch.save on a full disk: part of the file is written, then torch raises."""
    with open(file, "wb") as handle:
        handle.write(b"PK\x03\x04 partial")
    raise RuntimeError(
        "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed "
        "writing file data/0: file write failed"
    )


def test_failed_save_raises_checkpoint_error_and_keeps_the_last_checkpoint(
    small_config, tmp_path, monkeypatch
):
    model, state = trained_state(small_config)
    folder = tmp_path / "checkpoints"
    manager = CheckpointManager(folder, is_main=True)
    manager.save(with_step(state, model, 6), model, is_best=True)
    before = folder_snapshot(folder)

    monkeypatch.setattr(torch, "save", full_disk_torch_save)
    with pytest.raises(CheckpointError) as error:
        manager.save(with_step(state, model, 8), model)
    message = str(error.value)
    assert str(folder / "step-00000008.pt") in message and "file write failed" in message
    assert "run.resume=auto" in message  # what to do next
    monkeypatch.undo()
    # Nothing changed: no temporary file, no part of step 8, last.pt still step 6.
    after = folder_snapshot(folder)
    assert sorted(after) == sorted(before)
    assert after == before
    for name in ("last.pt", "best.pt"):
        loaded = load_checkpoint(folder / name)
        assert loaded["progress"]["global_step"] == 6
        assert torch.equal(loaded["model"]["head.bias"], torch.full((10,), 6.0)), name


def test_keep_last_prunes_old_step_files_but_last_and_best_stay(small_config, tmp_path):
    model, state = trained_state(small_config)
    folder = tmp_path / "checkpoints"
    manager = CheckpointManager(folder, is_main=True, keep_last=2)
    for step in range(1, 6):
        manager.save(with_step(state, model, step), model, is_best=step == 2)
    # The newest keep_last step files stay, and an older one only while best.pt needs it.
    steps = [path.name for path in manager.step_files()]
    assert steps[:2] == ["step-00000005.pt", "step-00000004.pt"]
    assert steps[2:] in ([], ["step-00000002.pt"]), steps
    suffixes = (".pt", ".pt.sha256")  # tests/test_safetensors.py checks the weights files
    names = {path.name for path in folder.iterdir()}
    kept = {name.removesuffix(".pt") for name in steps}
    assert {f"{stem}{suffix}" for stem in kept for suffix in suffixes} <= names
    assert {name.split(".")[0] for name in names} <= kept | {"last", "best"}, names
    for name, step in (("last.pt", 5), ("best.pt", 2), ("step-00000004.pt", 4)):
        loaded = load_checkpoint(folder / name)
        assert loaded["progress"]["global_step"] == step, name
        assert torch.equal(loaded["model"]["head.bias"], torch.full((10,), float(step))), name


def test_manager_removes_orphaned_temporary_files_at_start(small_config, tmp_path):
    model, state = trained_state(small_config)
    folder = tmp_path / "checkpoints"
    CheckpointManager(folder, is_main=True).save(state, model)
    before = folder_snapshot(folder)
    orphans = [
        folder / name
        for name in (
            ".step-00000009.pt.12345.tmp",
            ".last.pt.12345.tmp",
            ".step-00000009.pt.sha256.7.tmp",
        )
    ]
    for orphan in orphans:
        orphan.write_bytes(b"half")
    CheckpointManager(folder, is_main=False)  # other ranks leave files alone
    assert all(orphan.exists() for orphan in orphans)
    CheckpointManager(folder, is_main=True)
    assert folder_snapshot(folder) == before


def test_manager_finds_nothing_in_a_new_folder(tmp_path):
    manager = CheckpointManager(tmp_path / "missing", is_main=True)
    assert manager.candidates() == [] and manager.latest() is None
    assert manager.load_newest_valid() is None
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("damage", ["flipped_byte", "truncated"])
def test_damaged_step_file_is_caught_by_its_sidecar_and_skipped(
    small_config, tmp_path, project_log, damage
):
    model, state = trained_state(small_config)
    folder = tmp_path / "checkpoints"
    manager = CheckpointManager(folder, is_main=True)
    for step in (2, 4):
        manager.save(with_step(state, model, step), model)
    newest = folder / "step-00000004.pt"
    content = newest.read_bytes()
    if damage == "flipped_byte":
        content = flip_a_tensor_byte(content)
    else:
        content = content[:-100]
    with open(newest, "r+b") as file:  # in place: last.pt, the same file, is damaged too
        file.truncate(0)
        file.write(content)

    with pytest.raises(CheckpointError) as error:
        load_checkpoint(newest)
    assert str(newest) in str(error.value) and "SHA-256" in str(error.value)
    path, loaded = manager.load_newest_valid()
    assert path == folder / "step-00000002.pt"
    assert torch.equal(loaded["model"]["head.bias"], torch.full((10,), 2.0))
    warnings = [r.getMessage() for r in project_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipping" in warnings[0] and str(newest) in warnings[0]


def test_no_valid_checkpoint_raises_naming_every_file(small_config, tmp_path):
    model, state = trained_state(small_config)
    folder = tmp_path / "checkpoints"
    manager = CheckpointManager(folder, is_main=True)
    manager.save(state, model)
    (folder / "step-00000006.pt").write_bytes(b"")  # last.pt keeps the old inode: replace it
    (folder / "last.pt").unlink()
    (folder / "last.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError) as error:
        manager.load_newest_valid()
    message = str(error.value)
    assert "step-00000006.pt" in message and "last.pt" in message and "run.resume=" in message


def test_forcing_unsafe_loading_warns_and_still_refuses_malicious_files(
    tmp_path, monkeypatch, project_log
):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "evil.pt"
    torch.save({"model": MakesSentinel(sentinel), "progress": {}}, path)
    for load in (load_checkpoint, load_weights):
        project_log.clear()
        with pytest.raises(CheckpointError) as error:
            load(path)
        assert str(path) in str(error.value)
        assert not sentinel.exists(), f"{load.__name__} ran code from the file"
        warnings = [r.getMessage() for r in project_log.records if r.levelno == logging.WARNING]
        assert any("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in warning for warning in warnings)


def test_no_warning_when_safe_loading_is_not_forced_off(
    small_config, tmp_path, monkeypatch, project_log
):
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    model, state = trained_state(small_config)
    load_checkpoint(CheckpointManager(tmp_path, is_main=True).save(state, model))
    assert not project_log.records


def load_export_script():
    """export.py at the project root, as a module."""
    spec = importlib.util.spec_from_file_location("export_script", PROJECT_ROOT / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_export_writes_weights_equal_to_the_checkpoint(small_config, tmp_path, run_python):
    model, state = trained_state(small_config)
    checkpoint = CheckpointManager(tmp_path / "run" / "checkpoints", is_main=True).save(
        state, model
    )
    output = tmp_path / "exported" / "model.pt"
    result = run_python("export.py", str(checkpoint), str(output))
    assert result.returncode == 0, result.stderr
    assert str(output) in result.stdout
    weights = torch.load(output, weights_only=True)  # a plain state_dict
    assert_same(state["model"], weights, "exported")
    assert_same(state["model"], load_weights(output), "load_weights")
    fresh = small_model()
    fresh.load_state_dict(load_weights(output))


@pytest.mark.slow
def test_export_takes_a_run_folder_as_evaluate_and_predict_do(small_config, tmp_path, run_python):
    model, state = trained_state(small_config)
    CheckpointManager(tmp_path / "run" / "checkpoints", is_main=True).save(state, model)
    output = tmp_path / "from_folder.pt"
    result = run_python("export.py", str(tmp_path / "run"), str(output))
    assert result.returncode == 0, result.stderr
    assert "last.pt" in result.stdout  # the run has no best.pt: its last checkpoint
    assert_same(state["model"], load_weights(output), "exported from the run folder")
    (tmp_path / "empty").mkdir()
    result = run_python("export.py", str(tmp_path / "empty"), str(tmp_path / "none.pt"))
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and "holds no checkpoints/best.pt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "none.pt").exists()


@pytest.mark.slow
def test_export_defaults_to_every_format_in_the_run_folder_checked(make_config, tmp_path, capsys):
    from {{ cookiecutter.package_name }}.train import main

    assert main(make_config("train.max_steps=4")) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(checkpoint)
    export = load_export_script()
    assert export.main([str(checkpoint)]) == 0
    folder = tmp_path / "run" / "export"
    assert str(folder) in capsys.readouterr().out
    weights = folder / f"model{export.WEIGHT_SUFFIXES[0]}"
    assert_same(state["model"], load_weights(weights), "default output")
    assert_same(state["model"], load_weights(export_weights(checkpoint, tmp_path / "w.pt")))
    summary = json.loads((folder / "export.json").read_text(encoding="utf-8"))
    for name in (weights.name, "model.pt2"):
        figures = summary["files"][name]
        assert (folder / name).is_file() and figures["images"] > 0, name
        assert figures["top1_agreement"] == 1.0, name
        assert figures["max_abs_logit_difference"] <= summary["tolerance"], name
    onnx_installed = all(
        importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime")
    )
    assert ("skipped" in summary["files"]["model.onnx"]) != onnx_installed
    assert (folder / "model.onnx").is_file() == onnx_installed


@pytest.mark.parametrize("output", ["model.txt", "model", "model.pth"])
def test_export_refuses_an_unknown_suffix_with_exit_2(tmp_path, run_python, output):
    result = run_python("export.py", str(tmp_path / "any.pt"), str(tmp_path / output))
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and ".pt" in result.stderr
    assert not (tmp_path / output).exists()


def test_export_of_a_corrupt_checkpoint_exits_1_naming_it(small_config, tmp_path, capsys):
    model, state = trained_state(small_config)
    checkpoint = CheckpointManager(tmp_path / "checkpoints", is_main=True).save(state, model)
    checkpoint.write_bytes(flip_a_tensor_byte(checkpoint.read_bytes()))
    export = load_export_script()
    output = tmp_path / "weights.pt"
    assert export.main([str(checkpoint), str(output)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error:") and str(checkpoint) in error
    assert not output.exists() and not list(tmp_path.glob(".*.tmp"))
    assert export.main([]) == 2 and export.main(["a", "b", "c"]) == 2
