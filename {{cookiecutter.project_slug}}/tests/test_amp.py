"""Mixed precision (use_amp): the autocast dtype per device, the fp16 grad scaler, training."""

from dataclasses import replace

import pytest
import torch

from {{ cookiecutter.package_name }} import train
from {{ cookiecutter.package_name }}.amp import amp_dtype
from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.config import TrainConfig
from {{ cookiecutter.package_name }}.device import precision
from {{ cookiecutter.package_name }}.train import main

CPU = torch.device("cpu")


def test_amp_dtype_on_cpu():
    assert amp_dtype(TrainConfig(amp=True), CPU) is None  # bf16 is slower than fp32 there
    assert amp_dtype(TrainConfig(amp=True, amp_dtype="bf16"), CPU) is torch.bfloat16
    assert amp_dtype(TrainConfig(amp=False), CPU) is None
    assert amp_dtype(TrainConfig(amp=True, amp_dtype="fp16"), CPU) is torch.float16
    assert amp_dtype(TrainConfig(amp=True), torch.device("meta")) is None


def test_grad_scaler_only_for_fp16():
    assert not precision(TrainConfig(amp=True, amp_dtype="bf16"), CPU).scaler.is_enabled()
    assert not precision(TrainConfig(amp=False), CPU).scaler.is_enabled()
    assert precision(TrainConfig(amp=True, amp_dtype="fp16"), CPU).scaler.is_enabled()


def test_autocast_runs_matmuls_in_the_amp_dtype():
    left, right = torch.randn(4, 4), torch.randn(4, 4)
    bf16 = precision(TrainConfig(amp=True, amp_dtype="bf16"), CPU)
    assert bf16.dtype is torch.bfloat16
    with bf16.autocast():
        assert (left @ right).dtype is torch.bfloat16
    off = precision(TrainConfig(amp=False), CPU)
    assert off.dtype is None
    with off.autocast():
        assert (left @ right).dtype is torch.float32


def test_training_without_amp_also_runs(make_config, tmp_path):
    assert main(make_config("train.amp=false", "train.max_steps=2")) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
def test_a_run_without_a_grad_scaler_resumes_in_fp16(make_config, tmp_path, monkeypatch):
    # A run begun on a CPU (no scaler) and continued, with the same settings, on a GPU (fp16
    # and its scaler): fp16 on the CPU stands in for the GPU here, and the first run gets
    # the precision a CPU gives it. The empty scaler state once stopped the resume.
    settings = ("train.amp=true", "train.amp_dtype=fp16")
    with monkeypatch.context() as patch:
        patch.setattr(
            train, "precision", lambda cfg, device: precision(replace(cfg, amp=False), device)
        )
        assert main(make_config(*settings, "train.max_steps=2")) == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["scaler"] == {}
    resumed = make_config(*settings, "train.max_steps=4", "run.resume=auto")
    assert main(resumed) == 0
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint["progress"]["global_step"] == 4
    assert checkpoint["scaler"]["scale"] > 0
