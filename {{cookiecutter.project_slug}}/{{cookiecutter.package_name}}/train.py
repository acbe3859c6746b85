"""Training, top to bottom: config -> seed -> data/model/optimizer -> resume -> epochs.

Run it through the entry point at the project root:

    python train.py [CONFIG.yaml ...] [key=value ...]
{% if cookiecutter.use_ddp %}
    torchrun --standalone --nproc_per_node=2 train.py [CONFIG.yaml ...] [key=value ...]
{% endif %}
"""

import dataclasses
import datetime
import logging
import math
import os
import platform
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .checkpoint import (
    CheckpointError,
    CheckpointManager,
    check_finite_weights,
    load_checkpoint,
    load_model_state,
{% if cookiecutter.use_ddp %}
    rng_state,
{% endif %}
    set_rng_state,
    training_state,
)
from .config import Config, ConfigError, to_dict, to_yaml
from .data import STATS_FILE, build_datasets, build_loader, epoch_batch_sampler, save_stats
from .device import pick_device, precision
{% if cookiecutter.use_ddp %}
from .distributed import (
    StopVote,
    all_gather_object,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup,
    describe_collective_failure,
    init_distributed,
    rank_seed,
    restart_count,
    wrap_model,
)
{% endif %}
from .engine import NonFiniteLossError, TrainState, compile_model, evaluate, train_one_epoch
from .log import (
    CSVLog,
    MetricsCSV,
    attach_log_file,
    draws_progress_bar,
    progress_bar,
    read_csv,
    setup_logging,
)
from .model import build_model, check_model_name, model_summary
from .optim import PER_STEP_SCHEDULERS, build_optimizer, build_scheduler
from .plots import plot_run
{% if cookiecutter.tracker == "tensorboard" %}
from .tensorboard_log import TensorBoardWriter
{% endif %}

logger = logging.getLogger(__name__.rsplit(".", 1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_run_dir(cfg: Config) -> Path:
    """The run folder: `run.dir`, the folder of a checkpoint to resume, or a new one."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    if cfg.run.resume == "auto":
        raise ConfigError(
            "run.resume=auto needs run.dir, the folder of the run to continue, "
            "e.g. run.dir=runs/run-20260101-120000"
        )
    if cfg.run.resume:
        checkpoint = Path(cfg.run.resume)
        folder = checkpoint.parent
        return folder.parent if folder.name == "checkpoints" else folder
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path("runs") / f"{cfg.run.name}-{stamp}"
    suffix = 2
    while folder.exists():  # two runs started in the same second never share a folder
        folder = Path("runs") / f"{cfg.run.name}-{stamp}-{suffix}"
        suffix += 1
    return folder


def point_latest_at(run_dir: Path) -> None:
    """`runs/latest` -> this run's folder (a relative symlink, switched atomically)."""
    latest = run_dir.parent / "latest"
    temporary = run_dir.parent / f".latest.{os.getpid()}.tmp"
    try:
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(temporary, latest)
    except OSError as error:  # e.g. a filesystem without symlinks: the pointer is a comfort
        temporary.unlink(missing_ok=True)
        logger.warning("could not point %s at this run: %s", latest, error)


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


{% if cookiecutter.use_ddp %}
# In a default run folder made under torchrun: the id of the torchrun job that made it.
JOB_ID_FILE = ".torchrun-job-id"


def job_run_dir(cfg: Config) -> Path:
    """The run folder, the same in every attempt of one torchrun job.

    `torchrun --max-restarts=N` starts all workers again with the same arguments after one
    fails. A default run.dir holds the start time, so a restart looks for the folder whose
    JOB_ID_FILE names this job (torchrun's --rdzv-id; --standalone makes a unique one).
    """
    job_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if restart_count() > 0 and job_id and not cfg.run.dir and not cfg.run.resume:
        markers = sorted(Path("runs").glob(f"*/{JOB_ID_FILE}"), key=os.path.getmtime)
        for marker in reversed(markers):
            if marker.parent.is_symlink():  # runs/latest
                continue
            if marker.read_text(encoding="utf-8").strip() == job_id:
                return marker.parent
    return resolve_run_dir(cfg)


def rng_of_rank(checkpoint: dict, rank: int, world_size: int) -> dict | None:
    """This rank's RNG state in `checkpoint`; None when it was saved by another number of
    processes (the rank then starts a new stream of its own, see main)."""
    per_rank = checkpoint.get("rng_per_rank") or [checkpoint["rng"]]
    return per_rank[rank] if len(per_rank) == world_size else None


def find_resume_on_all_ranks(
    cfg: Config, checkpoints: CheckpointManager, rank: int
) -> tuple[Path, dict] | None:
    """Rank 0 chooses the checkpoint and every rank loads that very file, so none disagree
    (and none waits forever for a rank that chose differently or failed)."""
    found, choice = None, None
    if rank == 0:
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
    if kind == "none" or rank == 0:
        return found
    return Path(value), load_checkpoint(Path(value))


{% endif %}
class GracefulStop:
    """Ctrl-C or SIGTERM: finish the current step, save, and exit. A second Ctrl-C exits
    at once (the last checkpoint on disk stays intact either way)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        logger.warning(
            "%s received: finishing this step, then saving (Ctrl-C again to quit now)",
            signal.Signals(signum).name,
        )

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def main(cfg: Config, on_epoch_end: Callable[[dict], bool] | None = None) -> int:
    """Train with `cfg`; returns the process exit code.

    `on_epoch_end(row)`, if given, is called after each epoch has been saved, with that
    epoch's metrics.csv row (every process gets the same row). Returning True ends the run
    there, cleanly: a sweep uses it to stop (prune) a trial whose validation metric lags.
    """
{% if cookiecutter.use_ddp %}
    dist = init_distributed(cfg.train.ddp_timeout_s, cfg.train.device)
    rank, local_rank, world_size = dist.rank, dist.local_rank, dist.world_size
    run_dir = broadcast_object(job_run_dir(cfg) if rank == 0 else None)
    if restart_count() > 0:
        # torchrun restarted every worker after one failed: continue from the newest
        # checkpoint of this run, whatever run.resume said at the first start.
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume="auto"))
{% else %}
    rank, local_rank, world_size = 0, 0, 1
    run_dir = resolve_run_dir(cfg)
{% endif %}
    is_main = rank == 0
    check_model_name(cfg.model.name)  # a typo fails here, before any data is made
    checkpoints = CheckpointManager(run_dir / "checkpoints", is_main, cfg.run.keep_last)
{% if cookiecutter.use_ddp %}
    resume = find_resume_on_all_ranks(cfg, checkpoints, rank)
{% else %}
    resume = find_resume(cfg, checkpoints)
{% endif %}
    setup_logging(rank=rank)  # held in memory until the run folder is made, below
    logger.info("run folder: %s", run_dir)
{% if cookiecutter.use_ddp %}
    if restart_count() > 0:
        logger.info("torchrun restart %d: continuing from the newest checkpoint", restart_count())
{% endif %}
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device, local_rank)
    logger.info(
        "python %s, torch %s, device %s%s, %d threads, world size %d",
        platform.python_version(),
        torch.__version__,
        device,
        f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "",
        torch.get_num_threads(),
        world_size,
    )
    seed_everything(cfg.seed)

    data = build_datasets(cfg.data, cfg.seed, stats_file=run_dir / STATS_FILE)
    shard = dict(seed=cfg.seed, rank=rank, world_size=world_size, device=device)
    train_loader = build_loader(data.train, cfg.data, train=True, **shard)
    val_loader = build_loader(data.val, cfg.data, train=False, **shard)
    if cfg.data.num_workers == 0 and not getattr(data.train, "supports_batch_indexing", False):
        logger.warning(
            "data.num_workers=0: every image is decoded in the training process; "
            "data.num_workers=%d is usually much faster",
            min(os.cpu_count() or 2, 8),
        )
    train_batches = epoch_batch_sampler(train_loader)
    batches_per_epoch = train_batches.batches_per_epoch
    if batches_per_epoch == 0:
        raise ConfigError(f"the training set of {len(data.train)} samples gives no batch")
    logger.info(
        "data: %s, %d classes, %d train / %d val samples, %d batches per epoch",
        cfg.data.dataset,
        len(data.classes),
        len(data.train),
        len(data.val),
        batches_per_epoch,
    )

    # A resumed run takes its weights from the checkpoint: model.weights is not even read.
    model_cfg = dataclasses.replace(cfg.model, weights=None) if resume else cfg.model
    model = build_model(model_cfg, len(data.classes), data.in_channels)
    if is_main:  # counting FLOPs runs the model once on the CPU: once per job is enough
        summary = model_summary(model, cfg.model.name, data.in_channels, cfg.data.image_size)
        logger.info("%s", summary)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        model = compile_model(model, device)
{% if cookiecutter.use_ddp %}
    model = wrap_model(
        model, device, dist, cfg.train.sync_batchnorm, cfg.train.find_unused_parameters
    )
    if dist.enabled:
        # Every rank was seeded alike above, so all start from the same weights (DDP also
        # copies rank 0's); from here on each draws its own random numbers, or all ranks
        # would drop out the same units of their different samples.
        seed_everything(rank_seed(cfg.seed, rank))
{% endif %}
    optimizer = build_optimizer(cfg.optim, model)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.train.grad_accum_steps)
    # The schedule spans train.epochs; train.max_steps only stops early, so a run stopped
    # by it and resumed later follows the very same learning-rate curve.
    total_steps = steps_per_epoch * cfg.train.epochs
    scheduler = build_scheduler(cfg.sched, optimizer, steps_per_epoch, total_steps)
    step_per_batch = cfg.sched.name in PER_STEP_SCHEDULERS
    numerics = precision(cfg.train, device)
    autocast, scaler = numerics.autocast, numerics.scaler
    logger.info("mixed precision: %s", numerics.describe())

    state = TrainState()
    if resume is not None:
        resume_path, checkpoint = resume
        load_model_state(model, checkpoint["model"], resume_path)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = TrainState(**checkpoint["progress"])
{% if cookiecutter.use_ddp %}
        if rank != 0:  # the checkpoint's running sums are the totals over all ranks
            state.loss_sum, state.correct, state.seen = 0.0, 0.0, 0
        own_rng = rng_of_rank(checkpoint, rank, world_size)
        if own_rng is not None:
            set_rng_state(own_rng)
        else:
            logger.warning(
                "the checkpoint was saved by another number of processes: the random "
                "streams (dropout) start afresh, so this run will not repeat the original"
            )
            seed_everything(rank_seed(cfg.seed + state.global_step, rank))
{% else %}
        set_rng_state(checkpoint["rng"])
{% endif %}
        logger.info(
            "resumed from %s: epoch %d, batch %d, step %d",
            resume_path,
            state.epoch + 1,
            state.batch_in_epoch,
            state.global_step,
        )
    elif cfg.run.resume == "auto":
        logger.info("run.resume=auto: no checkpoint in %s yet, starting fresh", run_dir)

    writers = []
    lr_log = CSVLog(run_dir / "lr.csv", ("step", "lr"), position_column="step")
    lr_trace = []  # (step, lr) since the last save; written with each checkpoint
    if is_main:
        # Only now, with data and model built without error, does the run folder appear.
        run_dir.mkdir(parents=True, exist_ok=True)
        attach_log_file(run_dir / "train.log")
        (run_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
        if data.stats_source == "computed":
            save_stats(run_dir / STATS_FILE, data)
        metrics = MetricsCSV(run_dir / "metrics.csv")
        metrics.keep_epochs_before(state.epoch)
        writers.append(metrics)
        lr_log.keep_before(state.global_step + 1)
        if not cfg.run.dir:
            point_latest_at(run_dir)
{% if cookiecutter.use_ddp %}
            if "TORCHELASTIC_RUN_ID" in os.environ:  # for job_run_dir after a restart
                job_id = os.environ["TORCHELASTIC_RUN_ID"]
                (run_dir / JOB_ID_FILE).write_text(job_id, encoding="utf-8")
{% endif %}
        logger.info("resolved config:\n%s", to_yaml(cfg), extra={"console": False})
{% if cookiecutter.tracker == "tensorboard" %}
        tensorboard = TensorBoardWriter(run_dir / "tensorboard")
        writers.append(tensorboard)
        if resume is None:
            sample_images = next(iter(val_loader))[0]
            tensorboard.write_samples(sample_images)
            tensorboard.write_graph(model, sample_images.to(device))
{% endif %}

    stop = GracefulStop()
{% if cookiecutter.use_ddp %}
    stop_vote = StopVote(device)
{% endif %}
    last_saved_step = state.global_step if resume else -1

    def save(is_best: bool = False) -> None:
        nonlocal last_saved_step
        state.check_finite(scaler.is_enabled())  # never save NaN weights over good ones
        check_finite_weights(model, state.global_step)
        totals = state.as_dict()
{% if cookiecutter.use_ddp %}
        # Each rank sums its own share of the epoch: the checkpoint keeps the totals, which
        # rank 0 alone takes back on resume (see there), so the epoch's metrics stay exact.
        sums = torch.tensor(
            [totals["loss_sum"], totals["correct"], totals["seen"]],
            dtype=torch.float64,
            device=device,
        )
        loss_sum, correct, seen = all_reduce_sum(sums).tolist()
        totals.update(loss_sum=loss_sum, correct=correct, seen=int(seen))
{% endif %}
        snapshot = training_state(
            model,
            optimizer,
            scheduler,
            scaler,
            totals,
            to_dict(cfg),
            data.classes,
            data.normalization(),
        )
{% if cookiecutter.use_ddp %}
        snapshot["rng_per_rank"] = all_gather_object(rng_state())  # each rank's own stream
{% endif %}
        checkpoints.save(snapshot, model, is_best)
        if is_main:
            lr_log.write_rows([{"step": step, "lr": lr} for step, lr in lr_trace])
        lr_trace.clear()
{% if cookiecutter.use_ddp %}
        barrier()  # nobody reads a checkpoint before rank 0 has finished writing it
{% endif %}
        last_saved_step = state.global_step

    def stop_requested() -> bool:
        if cfg.train.max_steps and state.global_step >= cfg.train.max_steps:
            return True
{% if cookiecutter.use_ddp %}
        return stop_vote(stop.received is not None)  # every rank gets the same answer
{% else %}
        return stop.received is not None
{% endif %}

    def after_step() -> bool:
        lr_trace.append((state.global_step, optimizer.param_groups[0]["lr"]))
        every = cfg.run.save_every_steps
        inside_epoch = state.batch_in_epoch < batches_per_epoch
        if every and state.global_step % every == 0 and inside_epoch:
            save()
        return stop_requested()

    stopped_early = False
    run_start = time.perf_counter()
    try:
        while state.epoch < cfg.train.epochs and not stop_requested():
            epoch_start = time.perf_counter()
            seen_before = state.seen
            train_batches.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
            progress = progress_bar(
                batches_per_epoch,
                state.batch_in_epoch,
                f"epoch {state.epoch + 1}/{cfg.train.epochs}",
                enabled=draws_progress_bar(rank),
            )
            train_one_epoch(
                model,
                train_loader,
                batches_per_epoch,
                optimizer,
                scaler,
                scheduler,
                step_per_batch,
                state,
                cfg.train,
                device,
                autocast,
                after_step,
                progress,
            )
            progress.close()
            if state.batch_in_epoch < batches_per_epoch:
                break  # stopped inside the epoch; saved below

            train_totals = torch.tensor(
                [state.loss_sum, state.correct, state.seen], dtype=torch.float64, device=device
            )
            val_totals = evaluate(model, val_loader, device, autocast)
{% if cookiecutter.use_ddp %}
            train_totals = all_reduce_sum(train_totals)
            val_totals = all_reduce_sum(val_totals)
{% endif %}
            train_loss, train_acc = (train_totals[:2] / train_totals[2]).tolist()
            val_loss, val_acc = (val_totals[:2] / val_totals[2]).tolist()
            if not step_per_batch:
                scheduler.step(val_loss) if cfg.sched.name == "plateau" else scheduler.step()
            epoch_time = time.perf_counter() - epoch_start
            row = {
                "epoch": state.epoch,
                "step": state.global_step,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_time_s": epoch_time,
                "samples_per_s": (state.seen - seen_before) * world_size / epoch_time,
            }
            logger.info(
                "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  (%.1f s)",
                state.epoch + 1,
                cfg.train.epochs,
                train_loss,
                train_acc,
                val_loss,
                val_acc,
                epoch_time,
            )
            for writer in writers:
                writer.write(row)
            is_best = val_acc > state.best_val_acc
            if is_best:
                state.best_val_acc, state.best_epoch = val_acc, state.epoch
            # The checkpoint of a finished epoch points at the start of the next one.
            state.start_epoch(state.epoch + 1)
            save(is_best)
            if on_epoch_end is not None and on_epoch_end(row):
                logger.info("stopping after epoch %d, as on_epoch_end asked", state.epoch)
                stopped_early = True
                break
        if last_saved_step != state.global_step:
            save()  # stopped inside an epoch: the next run continues from this very batch
    finally:
        stop.restore()

    for writer in writers:
        writer.close()
    elapsed = time.perf_counter() - run_start
    if is_main:
        plots = plot_run(run_dir)
        logger.info("plots: %s", ", ".join(str(path) for path in plots) or "none yet")
    if stop.received is not None:
        logger.warning(
            "stopped by %s at step %d and saved; continue with: "
            "python train.py run.dir=%s run.resume=auto",
            signal.Signals(stop.received).name,
            state.global_step,
            run_dir,
        )
{% if cookiecutter.use_ddp %}
        cleanup()
{% endif %}
        return 128 + stop.received
    if state.epoch < cfg.train.epochs and not stopped_early:
        logger.info(
            "stopped at step %d (train.max_steps) in epoch %d after %.1f s; continue with "
            "run.dir=%s run.resume=auto and a larger train.max_steps",
            state.global_step,
            state.epoch + 1,
            elapsed,
            run_dir,
        )
    else:
        log_summary(run_dir, state, elapsed, checkpoints.folder)
{% if cookiecutter.use_ddp %}
    cleanup()
{% endif %}
    return 0


def log_summary(run_dir: Path, state: TrainState, elapsed: float, folder: Path) -> None:
    rows = read_csv(run_dir / "metrics.csv")
    speeds = [float(row["samples_per_s"]) for row in rows]
    logger.info(
        "done in %.1f s: best val acc %.4f at epoch %d, %.0f samples/s on average; "
        "best checkpoint %s",
        elapsed,
        state.best_val_acc,
        state.best_epoch + 1,
        sum(speeds) / max(len(speeds), 1),
        folder / "best.pt",
    )


def one_line(error: Exception) -> str:
    """The message of `error`, also when a DataLoader worker raised it: the loader then
    re-raises it with the worker's traceback as its message, whose last line is the
    original `ExceptionType: message`."""
    lines = str(error).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught "):
        return lines[-1].split(": ", 1)[-1]
    return str(error)


def run(cfg: Config, on_epoch_end: Callable[[dict], bool] | None = None) -> int:
    """`main` with the project's errors turned into one clear line and an exit code."""
    try:
        return main(cfg, on_epoch_end)
    except ConfigError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except (CheckpointError, NonFiniteLossError) as error:
        logger.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint on disk is intact", file=sys.stderr)
        return 130
{% if cookiecutter.use_ddp %}
    except RuntimeError as error:
        message = describe_collective_failure(error, cfg.train.ddp_timeout_s)
        if message is None:
            raise
        logger.error("%s", message)
        print(f"error: {message}", file=sys.stderr)
        return 1
{% endif %}
