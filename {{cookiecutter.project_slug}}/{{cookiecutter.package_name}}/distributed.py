"""Multi-process training with DistributedDataParallel, launched by torchrun.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every
process. Without them (a plain `python train.py`) everything here falls back to a single
process, so one code path serves both. The training code reaches this module through
`processes.join`, which returns `DistributedProcesses` below.
"""

import dataclasses
import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import CheckpointError, CheckpointManager, load_checkpoint
from .config import Config, ConfigError, TrainConfig
from .engine import TrainState
from .files import atomic_write_text
from .processes import SingleProcess
from .resume import find_resume
from .runs import RUNS, resolve_run_dir
from .seeding import rng_state, seed_everything, set_rng_state

logger = logging.getLogger(__name__.rsplit(".", 1)[0])
# In a default run folder made under torchrun: the id of the torchrun job that made it.
JOB_ID_FILE = ".torchrun-job-id"

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


class DistributedProcesses(SingleProcess):
    """The ranks of a torchrun job, as `processes.SingleProcess` describes them.

    Rank 0 alone writes the run folder and chooses what every rank resumes from; the others
    take its choices through broadcasts, so that no two ranks ever disagree.
    """

    def __init__(self, context: DistributedContext) -> None:
        self.rank, self.local_rank = context.rank, context.local_rank
        self.world_size = context.world_size
        self.context = context

    def this_attempt(self, cfg: Config) -> Config:
        if restart_count() == 0:
            return cfg
        # torchrun restarted every worker after one failed: continue from the newest
        # checkpoint of this run, whatever run.resume said at the first start.
        logger.info("torchrun restart %d: continuing from the newest checkpoint", restart_count())
        return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume="auto"))

    def run_dir(self, cfg: Config) -> Path:
        return broadcast_object(job_run_dir(cfg) if self.is_main else None)

    def find_resume(self, cfg: Config, checkpoints: CheckpointManager) -> tuple[Path, dict] | None:
        """Rank 0 chooses the checkpoint and every rank loads that very file, so none
        disagree (and none waits forever for a rank that chose differently or failed)."""
        found, choice = None, None
        if self.is_main:
            try:
                found = find_resume(cfg, checkpoints)
                choice = ("path", str(found[0])) if found else ("none", "")
            except ConfigError as error:
                choice = ("config", str(error))
            except CheckpointError as error:
                choice = ("checkpoint", str(error))
        kind, value = broadcast_object(choice)
        if kind == "config":
            raise ConfigError(value)
        if kind == "checkpoint":
            raise CheckpointError(value)
        if kind == "none" or self.is_main:
            return found
        return Path(value), load_checkpoint(Path(value))

    def made_run_dir(self, run_dir: Path) -> None:
        if "TORCHELASTIC_RUN_ID" in os.environ:  # for job_run_dir after a restart
            job_id = os.environ["TORCHELASTIC_RUN_ID"]
            atomic_write_text(run_dir / JOB_ID_FILE, job_id)

    def wrap_model(self, model: nn.Module, device: torch.device, cfg: Config) -> nn.Module:
        train = cfg.train
        model = wrap_model(
            model, device, self.context, train.sync_batchnorm, train.find_unused_parameters
        )
        if self.context.enabled:
            # Every rank was seeded alike, so all start from the same weights (DDP also
            # copies rank 0's); from here on each draws its own random numbers, or all
            # ranks would drop out the same units of their different samples.
            seed_everything(rank_seed(cfg.seed, self.rank))
        return model

    def rng_states_of_ranks(self) -> dict:
        return {"rng_per_rank": all_gather_object(rng_state())}

    def restore(self, state: TrainState, checkpoint: dict, seed: int) -> None:
        if self.rank != 0:  # the checkpoint's running sums are the totals over all ranks
            state.loss_sum, state.correct, state.seen = 0.0, 0.0, 0
        own_rng = rng_of_rank(checkpoint, self.rank, self.world_size)
        if own_rng is not None:
            set_rng_state(own_rng)
            return
        logger.warning(
            "the checkpoint was saved by another number of processes: the random "
            "streams (dropout) start afresh, so this run will not repeat the original"
        )
        seed_everything(rank_seed(seed + state.global_step, self.rank))

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(values)

    def agree(self, value: Any) -> Any:
        return broadcast_object(value)

    def barrier(self) -> None:
        barrier()

    def stop_vote(self, device: torch.device) -> Callable[[bool], bool]:
        return StopVote(device)

    def launch_command(self) -> str:
        if not self.context.enabled:  # plain python, without torchrun
            return super().launch_command()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        if local == self.world_size:  # one machine
            return f"torchrun --standalone --nproc_per_node={local} train.py"
        return "the same torchrun command on each node (train.py) with"

    def leave(self) -> None:
        cleanup()


def join(cfg: TrainConfig) -> DistributedProcesses:
    """This process's rank in the torchrun job (rank 0 of 1 without torchrun)."""
    return DistributedProcesses(init_distributed(cfg.ddp_timeout_s, cfg.device))


def describe_failure(error: BaseException, cfg: TrainConfig) -> str | None:
    """`describe_collective_failure` with train.ddp_timeout_s (see processes.describe_failure)."""
    return describe_collective_failure(error, cfg.ddp_timeout_s)


def job_run_dir(cfg: Config) -> Path:
    """The run folder, the same in every attempt of one torchrun job.

    `torchrun --max-restarts=N` starts all workers again with the same arguments after one
    fails. A default run.dir holds the start time, so a restart looks for the folder whose
    JOB_ID_FILE names this job (torchrun's --rdzv-id; --standalone makes a unique one).
    """
    job_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if restart_count() > 0 and job_id and not cfg.run.dir and not cfg.run.resume:
        markers = sorted(RUNS.glob(f"*/{JOB_ID_FILE}"), key=os.path.getmtime)
        for marker in reversed(markers):
            if marker.parent.is_symlink():  # runs/latest
                continue
            if marker.read_text(encoding="utf-8").strip() == job_id:
                return marker.parent
    return resolve_run_dir(cfg)


def rng_of_rank(checkpoint: dict, rank: int, world_size: int) -> dict | None:
    """This rank's RNG state in `checkpoint`; None when it was saved by another number of
    processes (the rank then starts a new stream of its own)."""
    per_rank = checkpoint.get("rng_per_rank") or [checkpoint["rng"]]
    return per_rank[rank] if len(per_rank) == world_size else None
