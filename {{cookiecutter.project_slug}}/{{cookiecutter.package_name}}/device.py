"""The device to run on: `train.device`, checked against what this machine has.

Its own module so that evaluate.py and predict.py pick a device as training does without
importing the training script's dependencies.
"""

import torch

from .config import ConfigError


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
