"""The processes that train together: one by default, or the ranks of a torchrun job.

The training code talks to its fellow processes only through the object `join` returns:
which rank it is, sums over all ranks, who chooses the run folder and the checkpoint to
resume from, whether all agree to stop. `SingleProcess` below is the answer when training
alone, where every one of these is trivial. In projects generated with DDP, the module
`distributed.py` provides `DistributedProcesses`, which answers the same questions for the
ranks of a torchrun job; `join` picks it when that module exists.
"""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CheckpointManager
from .config import Config, TrainConfig
from .engine import TrainState
from .features import feature_module
from .resume import find_resume
from .run_lock import RunFolderBusy, RunLock
from .runs import resolve_run_dir
from .seeding import set_rng_state

logger = logging.getLogger(__name__.rsplit(".", 1)[0])


class SingleProcess:
    """Training in this process alone: every collective operation is the identity."""

    rank = 0
    local_rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder (rank 0)."""
        return self.rank == 0

    def this_attempt(self, cfg: Config) -> Config:
        """`cfg` as this attempt of the job should run it."""
        return cfg

    def run_dir(self, cfg: Config) -> Path:
        return resolve_run_dir(cfg)

    def find_resume(self, cfg: Config, checkpoints: CheckpointManager) -> tuple[Path, dict] | None:
        """The checkpoint to continue from, loaded and verified; None for a fresh start."""
        return find_resume(cfg, checkpoints)

    def lock_run_folder(self, folder: Path) -> RunLock | None:
        """The main process's lock of the run folder (None elsewhere); every process raises
        RunFolderBusy when another run holds it."""
        lock, busy = None, None
        if self.is_main:
            try:
                lock = RunLock.acquire(folder)
            except RunFolderBusy as error:
                busy = str(error)
        busy = self.agree(busy)
        if busy is not None:
            raise RunFolderBusy(busy)
        return lock

    def launch_command(self) -> str:
        """How this run was started, for the command that continues it."""
        return "python train.py"

    def made_run_dir(self, run_dir: Path) -> None:
        """Called by the main process once it has made a new default run folder."""

    def wrap_model(self, model: nn.Module, device: torch.device, cfg: Config) -> nn.Module:
        """`model` as it trains in this process (a DDP replica under torchrun)."""
        return model

    def rng_states_of_ranks(self) -> dict:
        """What a checkpoint keeps of each rank's random streams beyond this one's."""
        return {}

    def restore(self, state: TrainState, checkpoint: dict, seed: int) -> None:
        """Take back this process's random streams (and share of the sums) from `checkpoint`."""
        set_rng_state(checkpoint["rng"])

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """`values` summed over all processes."""
        return values

    def agree(self, value: Any) -> Any:
        """The main process's `value`, on every process: one choice for all."""
        return value

    def barrier(self) -> None:
        """Wait until every process has arrived here."""

    def stop_vote(self, device: torch.device) -> Callable[[bool], bool]:
        """A function of this process's wish to stop that tells whether to stop now; every
        process gets the same answer, or the others would wait for it forever."""
        return bool

    def leave(self) -> None:
        """Leave the group of processes at the end of the run."""


def join(cfg: TrainConfig) -> SingleProcess:
    """This process's place among those that train together (see the module docstring)."""
    distributed = feature_module("distributed")
    return distributed.join(cfg) if distributed is not None else SingleProcess()


def describe_failure(error: BaseException, cfg: TrainConfig) -> str | None:
    """One line for an error between processes (a rank stalled or died); None for others."""
    distributed = feature_module("distributed")
    return distributed.describe_failure(error, cfg) if distributed is not None else None
