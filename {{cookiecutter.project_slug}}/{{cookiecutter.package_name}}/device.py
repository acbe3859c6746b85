"""The device to run on, and the numeric precision of the forward pass on it.

Its own module so that evaluate.py and predict.py pick a device and precision as training
does without importing the training script's dependencies.
"""

import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from .config import ConfigError, TrainConfig
from .features import feature_module


def processes_on_this_machine() -> int:
    """The training processes that share this machine (torchrun's LOCAL_WORLD_SIZE; 1 alone)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: no CUDA GPU is visible; use train.device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={name}: MPS is not available; use train.device=cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        # Input shapes are fixed, so cuDNN's one-off search for the fastest kernels pays.
        torch.backends.cudnn.benchmark = True
    return device


def copy_to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor (a batch's indices, its random crops) on `device`. To a GPU it goes
    through pinned memory without blocking: a plain copy would make the host wait for every
    step queued on the GPU, once a batch."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@dataclass(frozen=True)
class Precision:
    """How forward passes compute: `autocast()` is entered around each one, and `scaler`
    scales the loss (an fp16 grad scaler; a disabled one passes every call through)."""

    autocast: Callable[[], AbstractContextManager]
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None  # the autocast dtype; None for plain float32

    def describe(self) -> str:
        return str(self.dtype) if self.dtype is not None else "off"


def float32_precision(device: torch.device) -> Precision:
    """Plain float32: no autocast, no loss scaling."""
    return Precision(contextlib.nullcontext, torch.amp.GradScaler(device.type, enabled=False), None)


def precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """Mixed precision as train.amp asks, in projects generated with it; else float32."""
    amp = feature_module("amp")
    return amp.precision(cfg, device) if amp is not None else float32_precision(device)
