"""Automatic mixed precision: autocast dtype per device, and the fp16 gradient scaler."""

import contextlib
import functools
import logging

import torch

from .config import ConfigError, TrainConfig

logger = logging.getLogger(__name__.rsplit(".", 1)[0])


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None when AMP is off or the device cannot use it."""
    if not cfg.amp:
        return None
    if device.type not in ("cpu", "cuda"):
        logger.warning("train.amp: no mixed precision on %s; training in float32", device.type)
        return None
    if cfg.amp_dtype == "auto":
        # CUDA GPUs run fp16 fastest. On CPUs bf16 autocast was measured 1.13x slower than
        # float32 (bench/README.md): without bf16 matrix units it only adds conversions.
        return torch.float16 if device.type == "cuda" else None
    dtype = torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            "train.amp_dtype=bf16: this GPU does not support bfloat16; use train.amp_dtype=fp16"
        )
    return dtype


def autocast_factory(dtype: torch.dtype | None, device: torch.device):
    """A zero-argument function returning the autocast context for each forward pass."""
    if dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype)


def build_grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling is needed for fp16 only; a disabled scaler passes calls straight through."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
