"""Multi-process training with DistributedDataParallel, launched by torchrun.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE for every process. Without them (a plain
`python train.py`) everything here falls back to a single process, so one code path
serves both.
"""

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(timeout_s: int, device: str = "auto") -> DistributedContext:
    """Join the process group that torchrun set up (gloo on CPU, nccl on CUDA).

    `device` is train.device: CUDA training uses nccl, anything else gloo.
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistributedContext()
    context = DistributedContext(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    use_nccl = wants_cuda and torch.cuda.is_available() and dist.is_nccl_available()
    backend = "nccl" if use_nccl else "gloo"
    if not dist.is_available() or not (use_nccl or dist.is_gloo_available()):
        raise ConfigError("this torch build has no distributed backend (gloo or nccl)")
    if use_nccl:
        torch.cuda.set_device(context.local_rank)
    # An explicit timeout: a rank that hangs fails the whole job instead of blocking forever.
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return context


def wrap_model(model: nn.Module, device: torch.device, context: DistributedContext) -> nn.Module:
    if not context.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over all processes (the tensor itself when running alone)."""
    if dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value):
    """Rank 0's `value`, on every process: used so that all ranks agree on one choice."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group once every rank has arrived here.

    Without the barrier, a rank that finishes first can tear the group down while another
    still talks to it, and gloo then aborts that other rank at exit.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
