"""Training, top to bottom: config -> data -> model -> optimizer -> restore -> epochs -> artefacts.

Run it through the entry point at the project root:

    python train.py [CONFIG.yaml ...] [key=value ...]

The same code trains one process or each rank of a torchrun job: everything that differs
between the two is asked of the object that `processes.join` returns.
"""

import dataclasses
import logging
import math
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .checkpoint import (
    CheckpointError,
    CheckpointManager,
)
from .config import Config, ConfigError, TrainConfig, to_yaml
from .data import (
    STATS_FILE,
    DataBundle,
    build_datasets,
    build_loader,
    epoch_batch_sampler,
    save_stats,
)
from .device import pick_device, precision
from .engine import (
    NonFiniteLossError,
    PerClass,
    Trainer,
    TrainState,
    compile_model,
    evaluate,
    train_one_epoch,
)
from .errors import FAILURE, INTERRUPTED, Failure, describe, report
from .files import atomic_write_text
from .hooks import Hooks
from .log import attach_log_file, draws_progress_bar, progress_bar, read_csv, setup_logging
from .model import build_model, check_model_name, model_summary
from .optim import PER_STEP_SCHEDULERS, build_optimizer, build_scheduler
from .plots import plot_run
from .processes import SingleProcess, describe_failure, join
from .recipe import choose_data_settings, choose_machine_settings, inherit_choices
from .resume import restore
from .runs import RunFolder, point_latest_at, resolve_run_dir
from .saver import Saver
from .seeding import seed_everything
from .stopping import GracefulStop, StopRequests
from .trackers import open_trackers

logger = logging.getLogger(__name__.rsplit(".", 1)[0])


@dataclass
class Loaders:
    train: object
    val: object
    batches: object  # the train loader's EpochBatchSampler: positions it in an epoch
    batches_per_epoch: int


def main(cfg: Config, hooks: Hooks | None = None) -> int:
    """Train with `cfg`; returns the process exit code."""
    # Ctrl-C and SIGTERM are requests to stop from the first moment on (see GracefulStop).
    signals = GracefulStop()
    try:
        hooks = hooks or Hooks()
        team = join(cfg.train)
        setup_logging(rank=team.rank)  # held in memory until the run folder is made, below
        run = RunFolder(team.run_dir(cfg))
        cfg = team.this_attempt(cfg)
        check_model_name(cfg.model.name)  # a typo fails here, before any data is made
        checkpoints = CheckpointManager(run.checkpoints, team.is_main, cfg.run.keep_last)
        resume = team.find_resume(cfg, checkpoints)
        logger.info("run folder: %s", run.path)
        resumed = resume is not None
        if resumed:  # its automatic choices, not new ones: it goes on as it began
            cfg = inherit_choices(cfg, resume[1]["config"])
        cfg = choose_machine_settings(cfg)
        device = prepare_device(cfg.train, team)
        seed_everything(cfg.seed)

        data = build_datasets(cfg.data, cfg.seed, run.path / STATS_FILE, agree=team.agree)
        cfg = choose_data_settings(cfg, data, team.world_size)
        loaders = build_loaders(data, cfg, team, device)
        model = build_training_model(cfg, data, device, team, resumed=resumed)
        trainer = build_trainer(cfg, model, device, loaders.batches_per_epoch)

        state = TrainState()
        if resumed:
            state = restore(trainer, resume)
            team.restore(state, resume[1], cfg.seed)
        elif cfg.run.resume == "auto":
            logger.info("run.resume=auto: no checkpoint in %s yet, starting fresh", run.path)

        trackers = []
        if team.is_main:
            open_run_folder(run, cfg, data, team)
            trackers = open_trackers(run.path, state.epoch, resumed, model, loaders.val, device)
        saver = Saver(checkpoints, trainer, team, cfg, data, hooks, run.lr)
        saver.start(state, resumed)
        session = Session(cfg, team, trainer, loaders, state, saver, data.classes, trackers, hooks)

        run_start = time.perf_counter()
        stop = StopRequests(cfg.train.max_steps, team.stop_vote(device), signals)
        ended_early = train_epochs(session, stop)
        if saver.saved_step != state.global_step:
            saver.save(state)  # stopped inside an epoch: the next run continues from this batch
        elapsed = time.perf_counter() - run_start

        for tracker in trackers:
            tracker.close()
        if team.is_main:
            plots = plot_run(run.path)
            logger.info("plots: %s", ", ".join(str(path) for path in plots) or "none yet")
        exit_code = report_end(session, run, stop.signal, ended_early, elapsed)
        team.leave()
        return exit_code
    finally:
        signals.restore()


def prepare_device(cfg: TrainConfig, team: SingleProcess) -> torch.device:
    """The device of this process (train.device), with the CPU threads set and logged."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device, team.local_rank)
    logger.info(
        "python %s, torch %s, device %s%s, %d threads, world size %d",
        platform.python_version(),
        torch.__version__,
        device,
        f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "",
        torch.get_num_threads(),
        team.world_size,
    )
    return device


def build_loaders(
    data: DataBundle, cfg: Config, team: SingleProcess, device: torch.device
) -> Loaders:
    """The training and validation loaders of this process's share of the data."""
    shard = dict(seed=cfg.seed, rank=team.rank, world_size=team.world_size, device=device)
    train_loader = build_loader(data.train, cfg.data, train=True, **shard)
    val_loader = build_loader(data.val, cfg.data, train=False, **shard)
    if cfg.data.num_workers == 0 and not getattr(data.train, "supports_batch_indexing", False):
        logger.warning(
            "data.num_workers=0: every image is decoded in the training process; "
            "data.num_workers=%d is usually much faster",
            min(os.cpu_count() or 2, 8),
        )
    batches = epoch_batch_sampler(train_loader)
    if batches.batches_per_epoch == 0:
        raise ConfigError(f"the training set of {len(data.train)} samples gives no batch")
    logger.info(
        "data: %s, %d classes, %d train / %d val samples, %d batches per epoch",
        cfg.data.dataset,
        len(data.classes),
        len(data.train),
        len(data.val),
        batches.batches_per_epoch,
    )
    return Loaders(train_loader, val_loader, batches, batches.batches_per_epoch)


def build_training_model(
    cfg: Config, data: DataBundle, device: torch.device, team: SingleProcess, resumed: bool
) -> nn.Module:
    """The model on `device`, laid out, compiled and wrapped as train.* asks."""
    # A resumed run takes its weights from the checkpoint: model.weights is not even read.
    model_cfg = dataclasses.replace(cfg.model, weights=None) if resumed else cfg.model
    model = build_model(model_cfg, len(data.classes), data.in_channels)
    if team.is_main:  # counting FLOPs runs the model once on the CPU: once per job is enough
        summary = model_summary(model, cfg.model.name, data.in_channels, cfg.data.image_size)
        logger.info("%s", summary)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        model = compile_model(model, device)
    return team.wrap_model(model, device, cfg)


def build_trainer(
    cfg: Config, model: nn.Module, device: torch.device, batches_per_epoch: int
) -> Trainer:
    """The optimizer, the learning-rate schedule and the numeric precision of `model`."""
    optimizer = build_optimizer(cfg.optim, model)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.train.grad_accum_steps)
    # The schedule spans train.epochs; train.max_steps only stops early, so a run stopped
    # by it and resumed later follows the very same learning-rate curve.
    total_steps = steps_per_epoch * cfg.train.epochs
    scheduler = build_scheduler(cfg.sched, optimizer, steps_per_epoch, total_steps)
    numerics = precision(cfg.train, device)
    logger.info("mixed precision: %s", numerics.describe())
    per_step = cfg.sched.name in PER_STEP_SCHEDULERS
    return Trainer(model, optimizer, scheduler, per_step, numerics, cfg.train, device)


def open_run_folder(run: RunFolder, cfg: Config, data: DataBundle, team: SingleProcess) -> None:
    """Make the run folder: the log file, config.yaml, computed statistics, runs/latest.

    Only now, with data and model built without error, does the folder appear.
    """
    run.path.mkdir(parents=True, exist_ok=True)
    attach_log_file(run.log)
    atomic_write_text(run.config, to_yaml(cfg))  # a resume reads it back
    if data.stats_source == "computed":
        save_stats(run.path / STATS_FILE, data)
    if not cfg.run.dir:
        point_latest_at(run.path)
        team.made_run_dir(run.path)
    logger.info("resolved config:\n%s", to_yaml(cfg), extra={"console": False})


@dataclass
class Session:
    """What the epoch loop works with, grouped."""

    cfg: Config
    team: SingleProcess
    trainer: Trainer
    loaders: Loaders
    state: TrainState
    saver: Saver
    classes: list[str]
    trackers: list = field(default_factory=list)
    hooks: Hooks = field(default_factory=Hooks)


def train_epochs(session: Session, stop: StopRequests) -> bool:
    """Train until train.epochs or a stop request (saved below by main); returns True when
    the run ended before train.epochs as it should: early stopping, or the after_epoch hook."""
    cfg, state, loaders = session.cfg, session.state, session.loaders

    def after_step() -> bool:
        session.hooks.after_step(state)
        session.saver.note_step(state)
        every = cfg.run.save_every_steps
        inside_epoch = state.batch_in_epoch < loaders.batches_per_epoch
        if every and state.global_step % every == 0 and inside_epoch:
            session.saver.save(state)
        return stop(state)

    while state.epoch < cfg.train.epochs and not stop(state):
        if 0 < cfg.train.early_stop_patience <= state.epochs_since_best:
            logger.info(
                "stopping early: no better validation accuracy for %d epochs (best %.4f, "
                "epoch %d); train.early_stop_patience sets how long to wait",
                state.epochs_since_best,
                state.best_val_acc,
                state.best_epoch + 1,
            )
            return True
        epoch_start, seen_before = time.perf_counter(), state.seen
        loaders.batches.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
        progress = progress_bar(
            loaders.batches_per_epoch,
            state.batch_in_epoch,
            f"epoch {state.epoch + 1}/{cfg.train.epochs}",
            enabled=draws_progress_bar(session.team.rank),
        )
        train_one_epoch(
            session.trainer, loaders.train, loaders.batches_per_epoch, state, after_step, progress
        )
        progress.close()
        if state.batch_in_epoch < loaders.batches_per_epoch:
            return False  # stopped inside the epoch
        row = end_epoch(session, time.perf_counter() - epoch_start, state.seen - seen_before)
        if session.hooks.after_epoch(row):
            logger.info("stopping after epoch %d, as after_epoch asked", state.epoch)
            return True
    return False


def end_epoch(session: Session, epoch_time: float, samples: int) -> dict:
    """Validate, step an epoch-wise schedule, write the metrics row, save; returns the row."""
    trainer, state, team = session.trainer, session.state, session.team
    train_totals = torch.tensor(
        [state.loss_sum, state.correct, state.seen], dtype=torch.float64, device=trainer.device
    )
    train_totals = team.sum(train_totals)
    classes = len(session.classes)
    validation = evaluate(
        trainer.model, session.loaders.val, trainer.device, trainer.precision, classes
    )
    val_totals = team.sum(validation)
    train_loss, train_acc = (train_totals[:2] / train_totals[2]).tolist()
    val_loss, val_acc = (val_totals[:2] / val_totals[2]).tolist()
    per_class = PerClass(session.classes, val_totals[3:])
    if not trainer.step_scheduler_per_batch:
        plateau = session.cfg.sched.name == "plateau"
        trainer.scheduler.step(val_loss) if plateau else trainer.scheduler.step()
    row = {
        "epoch": state.epoch,
        "step": state.global_step,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "val_balanced_acc": per_class.balanced_accuracy,
        "lr": trainer.lr,
        "epoch_time_s": epoch_time,
        "samples_per_s": samples * team.world_size / epoch_time,
    }
    logger.info(
        "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f%s  (%.1f s)",
        state.epoch + 1,
        session.cfg.train.epochs,
        *(train_loss, train_acc, val_loss, val_acc),
        per_class.summary(),
        epoch_time,
    )
    for tracker in session.trackers:
        tracker.write(row)
    is_best = val_acc > state.best_val_acc
    if is_best:
        state.best_val_acc, state.best_epoch = val_acc, state.epoch
    state.start_epoch(state.epoch + 1)  # the checkpoint of a finished epoch points at the next
    session.saver.save(state, is_best)
    return row


def report_end(
    session: Session, run: RunFolder, stopped_by: int | None, ended_early: bool, elapsed: float
) -> int:
    """The run's last line; returns the exit code (128 + the signal that stopped it)."""
    state = session.state
    if stopped_by is not None:
        logger.warning(
            "stopped by %s at step %d and saved; continue with: "
            "python train.py run.dir=%s run.resume=auto",
            signal.Signals(stopped_by).name,
            state.global_step,
            run.path,
        )
        return 128 + stopped_by
    if state.epoch < session.cfg.train.epochs and not ended_early:
        logger.info(
            "stopped at step %d (train.max_steps) in epoch %d after %.1f s; continue with "
            "run.dir=%s run.resume=auto and a larger train.max_steps",
            state.global_step,
            state.epoch + 1,
            elapsed,
            run.path,
        )
        return 0
    speeds = [float(row["samples_per_s"]) for row in read_csv(run.metrics)]
    logger.info(
        "done in %.1f s: best val acc %.4f at epoch %d, %.0f samples/s on average; "
        "best checkpoint %s",
        elapsed,
        state.best_val_acc,
        state.best_epoch + 1,
        sum(speeds) / max(len(speeds), 1),
        run.checkpoints / "best.pt",
    )
    return 0


def run(cfg: Config, hooks: Hooks | None = None) -> int:
    """`main` with every input or environment error turned into one line and an exit code
    (see errors.py); a second Ctrl-C exits 130 at once, saying what is left on disk."""
    hooks = hooks or Hooks()
    saved_steps = []

    def after_save(state: TrainState) -> None:
        saved_steps.append(state.global_step)
        hooks.after_save(state)

    try:
        return main(cfg, dataclasses.replace(hooks, after_save=after_save))
    except KeyboardInterrupt:
        print(f"interrupted: {checkpoint_left(cfg, saved_steps)}", file=sys.stderr)
        return INTERRUPTED
    except Exception as error:
        failure = training_failure(error, cfg)
        if failure is None:
            raise  # a bug: its traceback shows where
        if failure.code == FAILURE:
            logger.error("%s", failure.message)  # into train.log too, where it is open
        return report(failure)


RUN_DIR_FIX = "point run.dir at a writable folder (a stopped run continues with run.resume=auto)"


def training_failure(error: Exception, cfg: Config) -> Failure | None:
    """errors.describe, and what only training meets: a diverged loss, a lost rank."""
    if isinstance(error, NonFiniteLossError):
        return Failure(str(error), FAILURE)
    if isinstance(error, RuntimeError) and not isinstance(error, CheckpointError):
        message = describe_failure(error, cfg.train)  # DDP: a rank stalled or died
        if message is not None:
            return Failure(message, FAILURE)
    return describe(error, RUN_DIR_FIX)


def checkpoint_left(cfg: Config, saved_steps: list[int]) -> str:
    """What a run stopped at once leaves to continue from, said as it is."""
    folder = None
    if cfg.run.dir or cfg.run.resume not in (None, "auto"):
        folder = resolve_run_dir(cfg)  # known without making anything; a new folder is not
    if folder is not None:
        newest = CheckpointManager(RunFolder(folder).checkpoints, is_main=False).latest()
        if newest is None:
            return f"no checkpoint was saved in {folder}, so there is nothing to continue from"
        return (
            f"the newest checkpoint, {newest}, is intact; continue with "
            f"python train.py run.dir={folder} run.resume=auto"
        )
    if not saved_steps:
        return "no checkpoint was saved yet, so there is nothing to continue from"
    return (
        f"the checkpoint of step {saved_steps[-1]} is intact; continue with python train.py "
        "run.dir=<the run folder named at the start> run.resume=auto"
    )
