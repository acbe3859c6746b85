"""Automatic mixed precision: the autocast dtype per device, and the fp16 gradient scaler.

Found through `device.precision` (this module exists only in projects generated with mixed
precision); `train.amp` and `train.amp_dtype` switch it at run time.
"""

import functools
import logging

import torch

from .config import ConfigError, TrainConfig
from .device import Precision, float32_precision

logger = logging.getLogger(__name__.rsplit(".", 1)[0])


def precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """Autocast in the dtype `cfg` asks for on `device`, with a grad scaler for fp16."""
    dtype = amp_dtype(cfg, device)
    if dtype is None:
        return float32_precision(device)
    return Precision(
        autocast=functools.partial(torch.autocast, device_type=device.type, dtype=dtype),
        # Loss scaling is needed for fp16 only; a disabled scaler passes calls through.
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        dtype=dtype,
    )


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
