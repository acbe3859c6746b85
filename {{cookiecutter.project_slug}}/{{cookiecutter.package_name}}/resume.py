"""Resuming a run: which checkpoint to continue from, and taking back its training state."""

import logging
from pathlib import Path

from .checkpoint import CheckpointManager, load_checkpoint, load_model_state
from .config import Config, ConfigError
from .engine import Trainer, TrainState

logger = logging.getLogger(__name__.rsplit(".", 1)[0])


def find_resume(cfg: Config, checkpoints: CheckpointManager) -> tuple[Path, dict] | None:
    """The checkpoint to continue from, loaded and verified; None for a fresh start."""
    if cfg.run.resume is None:
        if checkpoints.latest() is not None:
            raise ConfigError(
                f"run.dir={checkpoints.folder.parent} already holds checkpoints of a run; "
                "continue it with run.resume=auto, or choose another run.dir"
            )
        return None
    if cfg.run.resume == "auto":
        return checkpoints.load_newest_valid()  # skips broken files with a warning
    path = Path(cfg.run.resume)
    return path, load_checkpoint(path)


def restore(trainer: Trainer, resume: tuple[Path, dict]) -> TrainState:
    """Load the model, optimizer, scheduler and grad scaler of the checkpoint into `trainer`;
    returns where training stood. (Random streams: see processes.SingleProcess.restore.)"""
    path, checkpoint = resume
    load_model_state(trainer.model, checkpoint["model"], path)
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    trainer.scheduler.load_state_dict(checkpoint["scheduler"])
    # A run that trained without a grad scaler (on a CPU, in bf16 or float32) saved an empty
    # state; resumed in fp16 (on a GPU, say), its scaler starts from the initial scale.
    if checkpoint["scaler"]:
        trainer.precision.scaler.load_state_dict(checkpoint["scaler"])
    state = TrainState(**checkpoint["progress"])
    logger.info(
        "resumed from %s: epoch %d, batch %d, step %d",
        path,
        state.epoch + 1,
        state.batch_in_epoch,
        state.global_step,
    )
    return state
