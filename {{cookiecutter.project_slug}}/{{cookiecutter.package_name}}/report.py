"""What a run says when it ends: the last line and its exit code, and how to go on after a
loss that became NaN."""

import logging
import signal

from .log import read_csv
from .runs import RunFolder

logger = logging.getLogger(__name__.rsplit(".", 1)[0])


def report_end(
    session, run: RunFolder, stopped_by: int | None, ended_early: bool, elapsed: float
) -> int:
    """The run's last line; returns the exit code (128 + the signal that stopped it)."""
    state = session.state
    if stopped_by is not None:
        logger.warning(
            "stopped by %s at step %d and saved; continue with: %s run.resume=%s",
            signal.Signals(stopped_by).name,
            state.global_step,
            session.team.launch_command(),
            run.path,
        )
        return 128 + stopped_by
    if state.epoch < session.cfg.train.epochs and not ended_early:
        logger.info(
            "stopped at step %d (train.max_steps) in epoch %d after %.1f s; continue with: "
            "%s run.resume=%s train.max_steps=N (N > %d, or 0 for no limit)",
            state.global_step,
            state.epoch + 1,
            elapsed,
            session.team.launch_command(),
            run.path,
            state.global_step,
        )
        return 0
    rows = read_csv(run.metrics)  # a row carried over from another version may have none
    speeds = [float(row["samples_per_s"]) for row in rows if row["samples_per_s"]]
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


def nan_advice(session, run: RunFolder) -> str:
    """What is kept, and how to go on: the same settings with a lower learning rate (a
    fork of the last checkpoint may inherit weights already too large to recover)."""
    lower = f"{session.cfg.optim.lr / 10:g}"
    again = (
        f"train it again with a lower learning rate: python train.py {run.config} "
        f"run.dir=null optim.lr={lower}"
    )
    if session.saver.saved_step < 0:
        return f"no checkpoint was saved before it; {again}"
    return (
        f"checkpoints up to step {session.saver.saved_step} are kept; {again}, or go on "
        f"from its last checkpoint as a new run: python train.py run.resume={run.path} "
        f"run.fork=true optim.lr={lower}"
    )
