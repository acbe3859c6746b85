"""Multi-process training with DistributedDataParallel, launched by torchrun.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every
process. Without them (a plain `python train.py`) everything here falls back to a single
process, so one code path serves both.
"""

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import ConfigError

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


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
    context = _context_from_environment()
    if not context.enabled:
        return context
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = _pick_backend(wants_cuda)
    if backend == "nccl":
        if context.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={context.local_rank} but only {torch.cuda.device_count()} CUDA "
                "GPUs are visible; start at most one process per GPU (--nproc_per_node)"
            )
        torch.cuda.set_device(context.local_rank)
    # An explicit timeout: a rank that hangs fails the whole job instead of blocking forever.
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, timeout=timeout, **_store_of_this_attempt(context, timeout))
    return context


def _store_of_this_attempt(context: DistributedContext, timeout: datetime.timedelta) -> dict:
    """init_process_group's store arguments: torchrun's own store under a prefix per attempt.

    torchrun lends its rendezvous store to the workers and keeps it across restarts. After
    a restart (--max-restarts), the ranks would read the addresses that the failed attempt
    left there, try to reach dead processes, and fail or hang (pytorch/pytorch#135712).
    Keys under `attempt-<restart count>` start empty in every attempt.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}  # rank 0 starts a fresh store in every attempt
    shared = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        context.world_size,
        is_master=False,
        timeout=timeout,
    )
    return {
        "store": dist.PrefixStore(f"attempt-{restart_count()}", shared),
        "rank": context.rank,
        "world_size": context.world_size,
    }


def _context_from_environment() -> DistributedContext:
    """Rank and world size from torchrun's variables; one process when none is set."""
    present = [name for name in TORCHRUN_VARIABLES[:3] if name in os.environ]
    if not present or os.environ.get("WORLD_SIZE") == "1":
        return DistributedContext()
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ConfigError(
            f"{', '.join(present)} set but {', '.join(missing)} missing: start multi-process "
            "training with torchrun (e.g. torchrun --standalone --nproc_per_node=2 train.py), "
            "or unset these variables to train in one process"
        )
    try:
        context = DistributedContext(
            rank=int(os.environ["RANK"]),
            local_rank=int(os.environ["LOCAL_RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
        )
    except ValueError:
        values = ", ".join(f"{name}={os.environ[name]!r}" for name in TORCHRUN_VARIABLES[:3])
        raise ConfigError(f"{values}: torchrun's variables must be integers") from None
    if not 0 <= context.rank < context.world_size:
        raise ConfigError(
            f"RANK={context.rank} is outside WORLD_SIZE={context.world_size}; "
            "let torchrun set these variables"
        )
    return context


def _pick_backend(wants_cuda: bool) -> str:
    if not dist.is_available():
        raise ConfigError(
            "this torch build has no torch.distributed; install a standard torch build, "
            "or train in one process with python train.py"
        )
    if wants_cuda:
        if not torch.cuda.is_available():
            raise ConfigError(
                "train.device asks for CUDA but no GPU is visible; use train.device=cpu"
            )
        if not dist.is_nccl_available():
            raise ConfigError(
                "this torch build has no nccl backend for CUDA training; "
                "use train.device=cpu (gloo) or a torch build with nccl"
            )
        return "nccl"
    if not dist.is_gloo_available():
        raise ConfigError(
            "this torch build has no gloo backend for CPU training; "
            "use a CUDA GPU (nccl) or a standard torch build"
        )
    return "gloo"


def restart_count() -> int:
    """How often torchrun (--max-restarts) has restarted this job's workers so far."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s own random stream (dropout), distinct for every rank."""
    return (seed * 1_000_003 + rank + 1) % 2**63


def wrap_model(
    model: nn.Module,
    device: torch.device,
    context: DistributedContext,
    sync_batchnorm: bool = False,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """`model` as a DistributedDataParallel replica (itself when running alone).

    With `sync_batchnorm`, batch norm layers normalise with the statistics of the whole
    global batch instead of this rank's share (torch supports it on CUDA only).
    """
    if not context.enabled:
        return model
    if sync_batchnorm:
        if device.type != "cuda":
            raise ConfigError(
                f"train.sync_batchnorm=true needs CUDA; torch's SyncBatchNorm does not run "
                f"on {device.type}. Use train.sync_batchnorm=false"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over all processes (the tensor itself when running alone)."""
    if dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class StopVote:
    """Whether any rank asked to stop, agreed by all ranks one call late.

    All ranks must stop at the same step, or the others wait for the missing one forever.
    Each call adds this rank's wish to an all-reduce and returns the outcome of the call
    before. On a GPU that outcome was copied to the host a whole step earlier, so reading it
    waits for nothing in flight: the `.item()` of the current vote would make the host wait
    for every step to finish. (On a CPU the all-reduce is over when it returns anyway.)
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.previous: tuple[torch.Tensor, torch.cuda.Event | None] | None = None

    def __call__(self, wants_to_stop: bool) -> bool:
        if not dist.is_initialized():
            return wants_to_stop
        # torch.full is a kernel on the device; torch.tensor([...]) would be a blocking copy.
        votes = torch.full((1,), float(wants_to_stop), device=self.device)
        dist.all_reduce(votes, op=dist.ReduceOp.SUM)
        copied = None
        if self.device.type == "cuda":
            host = torch.empty(1, pin_memory=True)
            host.copy_(votes, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            votes = host
        previous, self.previous = self.previous, (votes, copied)
        if previous is None:
            return False
        votes, copied = previous
        if copied is not None:
            copied.synchronize()  # the copy of the previous step's vote: long done
        return votes.item() > 0


def all_gather_object(value) -> list:
    """Every rank's `value`, in rank order (`[value]` when running alone)."""
    if not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


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


def describe_collective_failure(error: BaseException, timeout_s: int) -> str | None:
    """One line for an error of the process group (a rank stalled or died); None for others."""
    if not dist.is_initialized() or not isinstance(error, RuntimeError):
        return None
    text = str(error).strip()
    first_line = text.splitlines()[0] if text else type(error).__name__
    lowered = text.lower()
    # gloo words a timeout two ways: "Timed out waiting 5000ms for recv operation" while it
    # waits itself, "Application timeout caused pair closure" when the wait ended elsewhere.
    if isinstance(error, dist.DistError) or "timed out" in lowered or "timeout" in lowered:
        reason = "waited too long for another rank"
    elif "connection" in lowered or "peer" in lowered:
        reason = "lost the connection to another rank"
    else:
        return None
    return (
        f"rank {dist.get_rank()} {reason} (train.ddp_timeout_s={timeout_s}): {first_line}. "
        "Another process stalled or died: torchrun --max-restarts=N restarts the job from "
        "its newest checkpoint, or continue it with run.resume=auto"
    )


def cleanup() -> None:
    """Leave the process group once every rank has arrived here.

    Without the barrier, a rank that finishes first can tear the group down while another
    still talks to it, and gloo then aborts that other rank at exit.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
