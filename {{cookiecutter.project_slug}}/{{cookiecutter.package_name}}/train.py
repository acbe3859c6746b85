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
    build_loader,
    epoch_batch_sampler,
    save_stats,
)
from .device import pick_device, precision
from .ema import WeightAverage
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
from .input_size import build_run_data
from .log import attach_log_file, counted, draws_progress_bar, progress_bar, setup_logging
from .manifest import write_manifest
from .model import build_model, check_input_size, check_model_name, model_summary
from .optim import PER_STEP_SCHEDULERS, build_optimizer, build_scheduler, fine_tuning
from .plots import plot_run
from .processes import SingleProcess, describe_failure, join
from .recipe import choose_data_settings, choose_machine_settings
from .report import nan_advice, report_end
from .resume import check_data, plan_run, restore
from .resume_rules import check_how_to_go_on
from .runs import RunFolder, check_resume_target, mark_run_folder, point_latest_at, resolve_run_dir
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


def main(cfg: Config, hooks: Hooks | None = None, given: set[str] | None = None) -> int:
    """Train with `cfg`; returns the process exit code. `given`: the settings the command
    line gave, which a resumed run applies to its own (see resume_rules); None: all."""
    # Ctrl-C and SIGTERM are requests to stop from the first moment on (see GracefulStop).
    signals = GracefulStop()
    lock = None
    try:
        hooks = hooks or Hooks()
        team = join(cfg.train)
        setup_logging(rank=team.rank)  # held in memory until the run folder is made, below
        cfg = team.this_attempt(cfg)
        check_how_to_go_on(cfg)
        check_model_name(cfg.model.name)  # a typo fails here, before any data is made
        run = RunFolder(team.run_dir(cfg))
        logger.info("run folder: %s", run.path)
        check_resume_target(cfg, team.is_main, team.agree)
        lock = team.lock_run_folder(run.path)  # before anything in it is read or changed
        plan, resume = plan_run(cfg, given, team, run)
        if plan.mode == "finished":
            return 0
        if lock is not None:
            lock.announce()  # from here on, this run writes the folder
        cfg, resumed = choose_machine_settings(plan.cfg), resume is not None
        checkpoints = CheckpointManager(run.checkpoints, team.is_main, cfg.run.keep_last)
        device = prepare_device(cfg.train, team)
        seed_everything(cfg.seed)

        cfg, data = build_run_data(cfg, run, resume, team, device)
        data_fingerprint = check_data(run, cfg, data, resume, device)
        cfg = choose_data_settings(cfg, data, team.world_size)
        loaders = build_loaders(data, cfg, team, device)
        model = build_training_model(cfg, data, device, team, resumed=resumed)
        trainer = build_trainer(
            cfg, model, device, loaders.batches_per_epoch, plan.schedule_start_epoch
        )

        state = TrainState()
        if resumed:
            state = restore(trainer, resume, extend=plan.mode == "extend")
            team.restore(state, resume[1], cfg.seed)

        trackers = []
        if team.is_main:
            open_run_folder(run, cfg, data, team)
            write_manifest(run.path, data_fingerprint, device)
            trackers = open_trackers(run.path, state.epoch, resume, model, loaders.val, device)
        saver = Saver(checkpoints, trainer, team, cfg, data, hooks, run.lr, trackers)
        saver.start(state, resumed)
        session = Session(cfg, team, trainer, loaders, state, saver, data.classes, trackers, hooks)

        run_start = time.perf_counter()
        stop = StopRequests(cfg.train.max_steps, team.stop_vote(device), signals)
        ended_early = train_with_advice(session, stop, run)
        elapsed = time.perf_counter() - run_start

        if team.is_main:
            plots = plot_run(run.path)
            logger.info("plots: %s", ", ".join(str(path) for path in plots) or "none yet")
        for tracker in trackers:  # after the plots: a tracker keeps them with its run
            tracker.close()
        exit_code = report_end(session, run, stop.signal, ended_early, elapsed)
        team.leave()
        return exit_code
    finally:
        if lock is not None:
            lock.release()
        signals.restore()


def prepare_device(cfg: TrainConfig, team: SingleProcess) -> torch.device:
    """The device of this process (train.device), with the CPU threads set and logged."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device, team.local_rank)
    logger.info(
        "python %s, torch %s, device %s%s, %s, world size %d",
        platform.python_version(),
        torch.__version__,
        device,
        f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "",
        counted(torch.get_num_threads(), "thread"),
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
    decodes = not getattr(data.train, "supports_batch_indexing", False)  # in memory: nothing to
    if cfg.data.num_workers == 0 and decodes and getattr(data.train, "decoded", None) is None:
        logger.warning(
            "data.num_workers=0: every image is decoded in the training process; "
            "data.num_workers=%d is usually much faster",
            min(os.cpu_count() or 2, 8),
        )
    batches = epoch_batch_sampler(train_loader)
    if batches.batches_per_epoch == 0:
        samples = counted(len(data.train), "sample")
        raise ConfigError(f"the training set of {samples} gives no batch")
    logger.info(
        "data: %s, %s, %d train / %d val samples, %s per epoch",
        cfg.data.dataset,
        counted(len(data.classes), "class", "classes"),
        len(data.train),
        len(data.val),
        counted(batches.batches_per_epoch, "batch", "batches"),
    )
    return Loaders(train_loader, val_loader, batches, batches.batches_per_epoch)


def build_training_model(
    cfg: Config, data: DataBundle, device: torch.device, team: SingleProcess, resumed: bool
) -> nn.Module:
    """The model on `device`, laid out, compiled and wrapped as train.* asks."""
    # A resumed run takes its weights from the checkpoint: model.weights is not even read.
    model_cfg = (
        dataclasses.replace(cfg.model, weights=None, pretrained=False) if resumed else cfg.model
    )
    model = build_model(model_cfg, len(data.classes), data.in_channels)
    # On every rank, so that under torchrun all of them stop on the same one line.
    check_input_size(model, cfg.model.name, data.in_channels, cfg.data.image_size)
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
    cfg: Config,
    model: nn.Module,
    device: torch.device,
    batches_per_epoch: int,
    schedule_start_epoch: int = 0,
) -> Trainer:
    """The optimizer, the learning-rate schedule (from `schedule_start_epoch` on: see
    run.extend) and the numeric precision of `model`."""
    tuning = fine_tuning(cfg.train.freeze_epochs, cfg.optim.backbone_lr_ratio, schedule_start_epoch)
    optimizer = build_optimizer(cfg.optim, model, tuning)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.train.grad_accum_steps)
    # The schedule spans train.epochs (an extended run's: the extra ones); train.max_steps
    # only stops early, so a run stopped by it and resumed later follows the same curve.
    total_steps = steps_per_epoch * (cfg.train.epochs - schedule_start_epoch)
    scheduler = build_scheduler(cfg.sched, optimizer, steps_per_epoch, total_steps, tuning)
    numerics = precision(cfg.train, device)
    logger.info("mixed precision: %s", numerics.describe())
    per_step = cfg.sched.name in PER_STEP_SCHEDULERS
    ema = WeightAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    return Trainer(model, optimizer, scheduler, per_step, numerics, cfg.train, device, ema)


def open_run_folder(run: RunFolder, cfg: Config, data: DataBundle, team: SingleProcess) -> None:
    """Make the run folder: its marker, the log file, config.yaml, computed statistics,
    runs/latest.

    Only now, with data and model built without error, does the folder appear.
    """
    run.path.mkdir(parents=True, exist_ok=True)
    mark_run_folder(run)  # first: from here on it is a run folder (see runs.py)
    attach_log_file(run.log)
    atomic_write_text(run.config, to_yaml(cfg))  # a record (a resume only compares it)
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
                "stopping early: no better validation accuracy for %s (best %.4f, "
                "epoch %d); train.early_stop_patience sets how long to wait",
                counted(state.epochs_since_best, "epoch"),
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


def train_with_advice(session: Session, stop: StopRequests, run: RunFolder) -> bool:
    """train_epochs, then a save where it stopped inside an epoch; a loss that became NaN
    says how to go on from the last good checkpoint."""
    try:
        ended_early = train_epochs(session, stop)
    except NonFiniteLossError as error:
        raise NonFiniteLossError(f"{error}; {nan_advice(session, run)}") from None
    if session.saver.saved_step != session.state.global_step:
        session.saver.save(session.state)  # stopped inside an epoch: the next run goes on here
    return ended_early


def end_epoch(session: Session, epoch_time: float, samples: int) -> dict:
    """Validate, step an epoch-wise schedule, write the metrics row, save; returns the row."""
    trainer, state, team = session.trainer, session.state, session.team
    train_totals = torch.tensor(
        [state.loss_sum, state.correct, state.seen], dtype=torch.float64, device=trainer.device
    )
    train_totals = team.sum(train_totals)
    train_loss, train_acc = (train_totals[:2] / train_totals[2]).tolist()
    validation, notes = validate(session)
    if not trainer.step_scheduler_per_batch:
        plateau = session.cfg.sched.name == "plateau"
        trainer.scheduler.step(validation["val_loss"]) if plateau else trainer.scheduler.step()
    row = {
        "epoch": state.epoch,
        "step": state.global_step,
        "train_loss": train_loss,
        "train_acc": train_acc,
        **validation,
        "lr": trainer.lr,
        "epoch_time_s": epoch_time,
        "samples_per_s": samples * team.world_size / epoch_time,
    }
    logger.info(
        "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f%s  (%.1f s)",
        state.epoch + 1,
        session.cfg.train.epochs,
        *(train_loss, train_acc, validation["val_loss"], validation["val_acc"]),
        notes,
        epoch_time,
    )
    for tracker in session.trackers:
        tracker.write(row)
    # With a moving average of the weights, it is what best.pt and early stopping go by.
    score = validation.get("val_acc_ema", validation["val_acc"])
    is_best = score > state.best_val_acc
    if is_best:
        state.best_val_acc, state.best_epoch = score, state.epoch
    state.start_epoch(state.epoch + 1)  # the checkpoint of a finished epoch points at the next
    session.saver.save(state, is_best)
    return row


def validate(session: Session) -> tuple[dict, str]:
    """The validation metrics of the weights, and of their moving average when there is one
    (summed over all processes); and what the epoch line adds to them."""
    trainer, classes = session.trainer, session.classes

    def sums_of(model: nn.Module) -> torch.Tensor:
        # The model inside DDP: its forward starts collectives (buffer broadcasts), which
        # processes with different numbers of validation batches would leave unmatched.
        bare = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        sums = evaluate(bare, session.loaders.val, trainer.device, trainer.precision, len(classes))
        return session.team.sum(sums)

    totals = sums_of(trainer.model)
    per_class = PerClass(classes, totals[3:])
    loss, accuracy = (totals[:2] / totals[2]).tolist()
    metrics = {"val_loss": loss, "val_acc": accuracy}
    metrics["val_balanced_acc"] = per_class.balanced_accuracy
    notes = per_class.summary()
    if trainer.ema is not None:
        totals = sums_of(trainer.ema.model)
        metrics["val_loss_ema"], metrics["val_acc_ema"] = (totals[:2] / totals[2]).tolist()
        notes += f"  ema acc {metrics['val_acc_ema']:.4f}"
    return metrics, notes


def run(cfg: Config, hooks: Hooks | None = None, given: set[str] | None = None) -> int:
    """`main` with every input or environment error turned into one line and an exit code
    (see errors.py); a second Ctrl-C exits 130 at once, saying what is left on disk."""
    hooks = hooks or Hooks()
    saved_steps = []

    def after_save(state: TrainState) -> None:
        saved_steps.append(state.global_step)
        hooks.after_save(state)

    try:
        return main(cfg, dataclasses.replace(hooks, after_save=after_save), given)
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
            f"python train.py run.resume={folder}"
        )
    if not saved_steps:
        return "no checkpoint was saved yet, so there is nothing to continue from"
    return (
        f"the checkpoint of step {saved_steps[-1]} is intact; continue with python train.py "
        "run.resume=<the run folder named at the start>"
    )
