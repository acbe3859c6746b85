"""Saving a training run: what a checkpoint holds, its checkpoints, and the lr.csv rows that
go with each."""

import platform
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CHECKPOINT_FORMAT, CheckpointManager, unwrap
from .config import Config, to_dict
from .data import DataBundle
from .engine import Trainer, TrainState
from .hooks import Hooks
from .log import CSVLog
from .processes import SingleProcess
from .seeding import rng_state
from .trackers import tracker_states


class Saver:
    """Writes the run's checkpoints, and with each the lr.csv rows of the steps since the last."""

    def __init__(
        self,
        checkpoints: CheckpointManager,
        trainer: Trainer,
        team: SingleProcess,
        cfg: Config,
        data: DataBundle,
        hooks: Hooks,
        lr_file: Path,
        trackers: list = (),
    ) -> None:
        self.checkpoints, self.trainer, self.team = checkpoints, trainer, team
        self.trackers = trackers  # each checkpoint keeps their state (e.g. a run id)
        self.cfg, self.data, self.hooks = cfg, data, hooks
        self.lr_log = CSVLog(lr_file, ("step", "lr"), position_column="step")
        self.lr_trace = []  # (step, lr) since the last save
        self.saved_step = -1

    def start(self, state: TrainState, resumed: bool) -> None:
        """Drop lr.csv rows past the checkpoint resumed from: they will be written again."""
        if self.team.is_main:
            self.lr_log.keep_before(state.global_step + 1)
        self.saved_step = state.global_step if resumed else -1

    def note_step(self, state: TrainState) -> None:
        self.lr_trace.append((state.global_step, self.trainer.lr))

    def save(self, state: TrainState, is_best: bool = False) -> None:
        trainer, team = self.trainer, self.team
        self.hooks.before_save(state)
        state.check_finite(trainer.precision.scaler.is_enabled())  # never save NaN weights
        check_finite_weights(trainer.model, state.global_step)
        progress = state.as_dict()
        # Each process sums its own share of the epoch: the checkpoint keeps the totals,
        # which rank 0 alone takes back on resume, so the epoch's metrics stay exact.
        sums = [progress["loss_sum"], progress["correct"], progress["seen"]]
        sums = team.sum(torch.tensor(sums, dtype=torch.float64, device=trainer.device))
        loss_sum, correct, seen = sums.tolist()
        progress.update(loss_sum=loss_sum, correct=correct, seen=int(seen))
        snapshot = training_state(
            trainer.model,
            trainer.optimizer,
            trainer.scheduler,
            trainer.precision.scaler,
            progress,
            to_dict(self.cfg),
            self.data.classes,
            self.data.normalization(),
        )
        snapshot.update(team.rng_states_of_ranks())
        snapshot["trackers"] = tracker_states(self.trackers)
        if trainer.ema is not None:
            snapshot["ema"] = trainer.ema.state_dict()
        self.checkpoints.save(snapshot, trainer.model, is_best)
        self.hooks.after_save(state)
        if team.is_main:
            self.lr_log.write_rows([{"step": step, "lr": lr} for step, lr in self.lr_trace])
        self.lr_trace.clear()
        team.barrier()  # nobody reads a checkpoint before rank 0 has finished writing it
        self.saved_step = state.global_step


def check_finite_weights(model: nn.Module, step: int) -> None:
    """Refuse to save NaN or infinite weights or buffers (e.g. batch-norm statistics):
    a checkpoint that cannot train is worse than the older one it would replace."""
    from .engine import NonFiniteLossError

    state = unwrap(model).state_dict()
    bad = [
        name
        for name, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise NonFiniteLossError(
            f"the model's {', '.join(bad[:5])} became NaN or infinite by optimizer step {step}"
        )


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    progress: dict,
    config: dict,
    classes: list[str],
    normalization: dict | None = None,
) -> dict:
    """Everything a checkpoint holds, as plain types.

    `normalization` holds the mean and std the inputs were normalised with: evaluate.py and
    predict.py need them when the config left them to be computed from the data.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "progress": progress,
        "rng": rng_state(),
        "config": config,
        "classes": list(classes),
        "normalization": normalization or {},
        # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
        "versions": {"torch": str(torch.__version__), "python": platform.python_version()},
    }
