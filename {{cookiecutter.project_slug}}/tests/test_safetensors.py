"""Model weights as .safetensors: written by a run, equal to the checkpoint, checked on load."""

import pytest
import torch

from {{ cookiecutter.package_name }}.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
)
from {{ cookiecutter.package_name }}.train import main


def test_run_writes_safetensors_equal_to_the_checkpoint(make_config, tmp_path):
    assert main(make_config()) == 0
    folder = tmp_path / "run" / "checkpoints"
    for name in ("last", "best"):
        weights = load_weights(folder / f"{name}.safetensors")
        checkpoint = load_checkpoint(folder / f"{name}.pt")["model"]
        assert set(weights) == set(checkpoint)
        for key, tensor in checkpoint.items():
            assert weights[key].dtype == tensor.dtype, key
            assert torch.equal(weights[key], tensor), key
        from_checkpoint = load_weights(folder / f"{name}.pt")
        assert torch.equal(from_checkpoint["head.weight"], weights["head.weight"])


def test_mid_epoch_stop_also_writes_safetensors(make_config, tmp_path):
    assert main(make_config("train.max_steps=2")) == 0
    folder = tmp_path / "run" / "checkpoints"
    weights = load_weights(folder / "last.safetensors")
    checkpoint = load_checkpoint(folder / "last.pt")["model"]
    assert all(torch.equal(weights[key], tensor) for key, tensor in checkpoint.items())


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_malformed_safetensors_raises_checkpoint_error_naming_it(make_config, tmp_path, damage):
    assert main(make_config("train.max_steps=1")) == 0
    good = (tmp_path / "run" / "checkpoints" / "last.safetensors").read_bytes()
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
