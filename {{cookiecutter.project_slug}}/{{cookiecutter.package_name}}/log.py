"""Logging to the console and `train.log`, and the per-epoch metrics CSV.

Only the main process (rank 0) writes files; other ranks print warnings and errors only,
each line tagged with its rank.
"""

import csv
import logging
import sys
from logging.handlers import MemoryHandler
from pathlib import Path

LOGGER_NAME = "{{ cookiecutter.package_name }}"
METRIC_COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "epoch_time_s",
    "samples_per_s",
)


def setup_logging(log_file: Path | None = None, rank: int = 0) -> logging.Logger:
    """The project's logger: INFO to stdout and `log_file` on rank 0, WARNING elsewhere.

    Without `log_file`, records are held in memory until `attach_log_file` is called, so a
    run that fails on a bad setting before its folder exists leaves no folder behind.
    """
    logger = logging.getLogger(LOGGER_NAME)
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()
    logger.propagate = False
    prefix = "" if rank == 0 else f"[rank {rank}] "
    formatter = logging.Formatter(
        f"%(asctime)s %(levelname)s {prefix}%(message)s", datefmt="%H:%M:%S"
    )
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    logger.addHandler(console)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    if rank == 0:
        if log_file is None:
            # Never flushes by itself: capacity and level are out of reach.
            logger.addHandler(MemoryHandler(capacity=1_000_000, flushLevel=logging.CRITICAL + 1))
        else:
            attach_log_file(log_file)
    return logger


def attach_log_file(log_file: Path) -> None:
    """Start writing `log_file` (appending on resume), first with the records held so far."""
    logger = logging.getLogger(LOGGER_NAME)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    for handler in list(logger.handlers):
        if isinstance(handler, MemoryHandler):
            handler.setTarget(file_handler)
            handler.flush()
            logger.removeHandler(handler)
            handler.close()
    logger.addHandler(file_handler)


class MetricsCSV:
    """`metrics.csv`: one row per finished epoch, with the columns of METRIC_COLUMNS."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def keep_epochs_before(self, epoch: int) -> None:
        """Drop rows of `epoch` and later: a resumed run writes them again.

        A run killed after writing an epoch's row but before saving its checkpoint
        would otherwise repeat that row; this keeps exactly one row per epoch.
        """
        if not self.path.exists():
            return
        with self.path.open(newline="", encoding="utf-8") as file:
            rows = [row for row in csv.DictReader(file) if int(row["epoch"]) < epoch]
        with self.path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        new_file = not self.path.exists()
        with self.path.open("a", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=METRIC_COLUMNS)
            if new_file:
                writer.writeheader()
            writer.writerow({key: _format(row[key]) for key in METRIC_COLUMNS})

    def close(self) -> None:
        """Nothing to release: every write opens and closes the file."""


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
