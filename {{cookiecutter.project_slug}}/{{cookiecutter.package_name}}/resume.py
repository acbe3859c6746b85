"""Resuming a run: which checkpoint to continue from, and taking back its training state."""

import logging
from pathlib import Path

from .checkpoint import CheckpointManager, load_checkpoint, load_model_state
from .config import Config, ConfigError
from .engine import Trainer, TrainState
from .runs import CHECKPOINTS, RUNS, newest_run, run_dir_of

logger = logging.getLogger(__name__.rsplit(".", 1)[0])


def find_resume(cfg: Config, checkpoints: CheckpointManager) -> tuple[Path, dict] | None:
    """The checkpoint to go on from, loaded and verified; None for a fresh start.

    `checkpoints` are those of this run's folder. run.resume names a checkpoint, a run
    folder (its newest valid checkpoint) or `auto` (the newest valid one of this run's
    folder, if any yet); with run.fork it is another run's, and this folder a new one.
    """
    resume = cfg.run.resume
    if resume is None or cfg.run.fork:
        if checkpoints.latest() is not None:
            raise ConfigError(
                f"run.dir={checkpoints.folder.parent} already holds checkpoints of a run; "
                f"continue it with run.resume={checkpoints.folder.parent}, or choose another "
                "run.dir"
            )
    if resume is None:
        return None
    if resume == "auto" and not cfg.run.fork:
        return checkpoints.load_newest_valid()  # skips broken files with a warning
    source = newest_run() if resume == "auto" else Path(resume)
    if source is None:
        raise ConfigError(f"run.resume=auto: no run in {RUNS} to start from")
    if not source.is_dir():
        return source, load_checkpoint(source)
    folder = run_dir_of(source) / CHECKPOINTS
    found = CheckpointManager(folder, is_main=False).load_newest_valid()
    if found is None:
        raise ConfigError(
            f"run.resume={resume}: {run_dir_of(source)} holds no checkpoint yet; "
            "give a run folder that has one, or leave run.resume out for a fresh run"
        )
    return found


def restore(trainer: Trainer, resume: tuple[Path, dict], extend: bool = False) -> TrainState:
    """Load the model, optimizer, scheduler and grad scaler of the checkpoint into `trainer`;
    returns where training stood. (Random streams: see processes.SingleProcess.restore.)

    `extend` (run.extend): the run trains extra epochs on a schedule of their own, so the
    scheduler stays as built, at its start, and the optimizer takes its learning rate.
    """
    path, checkpoint = resume
    load_model_state(trainer.model, checkpoint["model"], path)
    schedule_start = [group["lr"] for group in trainer.optimizer.param_groups]
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    state = TrainState(**checkpoint["progress"])
    if extend:
        for group, lr in zip(trainer.optimizer.param_groups, schedule_start, strict=True):
            group["lr"] = lr
        state.schedule_start_epoch = state.epoch
    else:
        trainer.scheduler.load_state_dict(checkpoint["scheduler"])
    trainer.precision.scaler.load_state_dict(checkpoint["scaler"])
    logger.info(
        "resumed from %s: epoch %d, batch %d, step %d",
        path,
        state.epoch + 1,
        state.batch_in_epoch,
        state.global_step,
    )
    return state
