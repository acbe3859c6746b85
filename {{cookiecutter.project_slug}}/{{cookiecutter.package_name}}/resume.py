"""Resuming a run: which checkpoint to go on from and how (see resume_rules), whether the
data is still what it was, and taking back the training state."""

import logging
from pathlib import Path

import torch

from .checkpoint import CheckpointManager, load_checkpoint, load_model_state
from .class_names import class_difference
from .config import Config, ConfigError
from .data import DataBundle
from .data.fingerprint import fingerprint
from .ema import WeightAverage
from .engine import Trainer, TrainState
from .manifest import check_resume
from .resume_rules import Plan, plan_continuation
from .runs import CHECKPOINTS, RUNS, RunFolder, newest_run, run_dir_of

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
    # A run that trained without a grad scaler (on a CPU, in bf16 or float32) saved an empty
    # state; resumed in fp16 (on a GPU, say), its scaler starts from the initial scale.
    if checkpoint["scaler"]:
        trainer.precision.scaler.load_state_dict(checkpoint["scaler"])
    if trainer.ema is not None and "ema" in checkpoint:
        trainer.ema.load_state_dict(checkpoint["ema"])
    elif trainer.ema is not None:  # a checkpoint without one: the average starts here
        trainer.ema = WeightAverage(trainer.model, trainer.ema.decay)
    logger.info(
        "resumed from %s: epoch %d, batch %d, step %d",
        path,
        state.epoch + 1,
        state.batch_in_epoch,
        state.global_step,
    )
    return state


def plan_run(
    cfg: Config, given: set[str] | None, team, run: RunFolder
) -> tuple[Plan, tuple | None]:
    """How this run goes on: fresh, or from which checkpoint and in which way (see
    resume_rules); the checkpoint is None for a fresh run or a fork (its weights come in
    through model.weights)."""
    resume = team.find_resume(cfg, CheckpointManager(run.checkpoints, is_main=False))
    if resume is None:
        if cfg.run.resume == "auto":
            logger.info("run.resume=auto: no checkpoint in %s yet, starting fresh", run.path)
        return Plan(cfg, "fresh", 0), None
    plan = plan_continuation(cfg, given, *resume)
    return plan, (None if plan.mode == "fork" else resume)


def check_data(
    run: RunFolder, cfg: Config, data: DataBundle, resume: tuple | None, device: torch.device
) -> dict:
    """The data's fingerprint (for manifest.json). A resumed run must find the classes it
    began with, in the same order, and the same files unless run.allow_changed_data; another
    torch, CUDA or device only costs a warning (see manifest.py)."""
    data_fingerprint = fingerprint(cfg)
    if resume is None:
        return data_fingerprint
    difference = class_difference(resume[1]["classes"], data.classes)
    if difference is not None:
        raise ConfigError(
            f"the classes of the data differ from those {resume[0]} was trained on: "
            f"{difference}. Resume with the data it was trained on, or train a new run"
        )
    check_resume(run.path, data_fingerprint, device, cfg.run.allow_changed_data)
    return data_fingerprint
