"""Checkpoints: round trip, RNG states, prefixes, mismatches, corrupt and unsafe files."""

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from {{ cookiecutter.package_name }}.checkpoint import (
    CheckpointError,
    CheckpointManager,
    atomic_path,
    load_checkpoint,
    load_model_state,
    load_weights,
    rng_state,
    set_rng_state,
    strip_prefixes,
    training_state,
)
from {{ cookiecutter.package_name }}.config import (
    ModelConfig,
    OptimConfig,
    SchedConfig,
    to_dict,
)
from {{ cookiecutter.package_name }}.engine import TrainState
from {{ cookiecutter.package_name }}.model import build_model
from {{ cookiecutter.package_name }}.optim import (
    build_optimizer,
    build_scheduler,
)


def small_model(num_classes: int = 10) -> nn.Module:
    return build_model(ModelConfig(width=8), num_classes=num_classes, in_channels=3)


def trained_state(small_config, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """A model and optimizer after two steps, packed by training_state."""
    torch.manual_seed(0)
    model = model if model is not None else small_model()
    optimizer = build_optimizer(OptimConfig(), model)
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


def assert_tensors_equal(expected, actual, where: str = "") -> None:
    """Recursively compare nested dicts/lists whose leaves are tensors or plain values."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and torch.equal(expected, actual), where
    elif isinstance(expected, dict):
        assert set(expected) == set(actual), where
        for key in expected:
            assert_tensors_equal(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            assert_tensors_equal(left, right, f"{where}[{index}]")
    else:
        assert expected == actual, where


def test_save_and_load_round_trip(small_config, tmp_path):
    model, state = trained_state(small_config)
    manager = CheckpointManager(tmp_path / "checkpoints", is_main=True)
    path = manager.save(state, model, "last")
    assert path == tmp_path / "checkpoints" / "last.pt" and manager.latest() == path

    loaded = load_checkpoint(path)
    assert_tensors_equal(state["model"], loaded["model"], "model")
    assert_tensors_equal(state["optimizer"], loaded["optimizer"], "optimizer")
    assert loaded["scheduler"] == state["scheduler"]
    assert loaded["progress"] == state["progress"] and loaded["config"] == state["config"]
    assert loaded["classes"] == ["a", "b"]
    # The file holds plain types only: loadable without the project's code running.
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert_tensors_equal(state["model"], raw["model"], "model")
    assert_tensors_equal(model.state_dict(), load_weights(path), "weights")

    fresh = small_model()
    load_model_state(fresh, loaded["model"], path)
    inputs = torch.randn(2, 3, 16, 16)
    assert torch.equal(fresh.eval()(inputs), model.eval()(inputs))


def test_only_the_main_process_writes(small_config, tmp_path):
    model, state = trained_state(small_config)
    manager = CheckpointManager(tmp_path / "checkpoints", is_main=False)
    manager.save(state, model, "last")
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
    assert_tensors_equal(source.state_dict(), target.state_dict())


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


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "empty", "missing"])
def test_damaged_file_raises_checkpoint_error_naming_it(small_config, tmp_path, damage):
    model, state = trained_state(small_config)
    good = CheckpointManager(tmp_path, is_main=True).save(state, model, "good")
    path = tmp_path / f"{damage}.pt"
    content = good.read_bytes()
    if damage == "truncated":
        path.write_bytes(content[: len(content) // 2])
    elif damage == "random_bytes":
        path.write_bytes(random.Random(0).randbytes(len(content)))
    elif damage == "empty":
        path.write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_file_without_model_weights_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="other.pt"):
        load_checkpoint(path)


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


def test_failed_save_raises_checkpoint_error_and_keeps_the_last_checkpoint(
    small_config, tmp_path, monkeypatch
):
    model, state = trained_state(small_config)
    manager = CheckpointManager(tmp_path / "checkpoints", is_main=True)
    path = manager.save(state, model, "last")
    before = path.read_bytes()

    def failing_save(obj, file):
        with open(file, "wb") as handle:
            handle.write(b"partial")
        raise RuntimeError("unexpected pos 64")  # what torch raises on a full disk

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointError) as error:
        manager.save(state, model, "last")
    assert str(path) in str(error.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_manager_removes_orphaned_temporary_files(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    orphan = folder / ".last.pt.12345.tmp"
    orphan.write_bytes(b"half")
    (folder / "last.pt").write_bytes(b"keep")
    CheckpointManager(folder, is_main=True)
    assert not orphan.exists() and (folder / "last.pt").read_bytes() == b"keep"
