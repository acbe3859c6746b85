"""Logging to the console and `train.log`, and the CSV files of metrics (metrics.csv, lr.csv).

Only the main process (rank 0) writes files; other ranks print warnings and errors only,
each line tagged with its rank.
"""

import csv
import logging
import os
import shutil
import sys
import time
from logging.handlers import MemoryHandler
from pathlib import Path

from .csv_files import CSVRead, read_rows, set_aside
from .errors import quiet
from .files import atomic_path

LOGGER_NAME = "{{ cookiecutter.package_name }}"
METRIC_COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_balanced_acc",
    "val_loss_ema",  # of the weights' moving average (train.ema_decay); empty without one
    "val_acc_ema",
    "lr",
    "epoch_time_s",
    "samples_per_s",
)
LR_COLUMNS = ("step", "lr")


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
    # stdout may have no reader any more (`python train.py | head`), or be closed or full:
    # the console then falls silent, and train.log keeps every line.
    console = logging.StreamHandler(quiet(sys.stdout))
    console.setFormatter(formatter)
    # Records logged with extra={"console": False} go to train.log only (e.g. the step
    # lines that a progress bar already shows, or the whole resolved config).
    console.addFilter(lambda record: getattr(record, "console", True))
    logger.addHandler(console)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    if rank == 0:
        if log_file is None:
            # Never flushes by itself: capacity and level are out of reach.
            logger.addHandler(MemoryHandler(capacity=1_000_000, flushLevel=logging.CRITICAL + 1))
        else:
            attach_log_file(log_file)
    return logger


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """A count with its noun in the right number: "1 batch", "2 batches", "0 epochs"."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def log_choice(key: str, value, reason: str) -> None:
    """The one line that reports an automatic choice of a setting (see recipe.py)."""
    logging.getLogger(LOGGER_NAME).info("auto: %s=%s (%s)", key, value, reason)


def attach_log_file(log_file: Path) -> None:
    """Start writing `log_file` (appending on resume), first with the records held so far."""
    logger = logging.getLogger(LOGGER_NAME)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler = LogFile(log_file, encoding="utf-8")
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


class LogFile(logging.FileHandler):
    """train.log. A write that fails (a full disk, say) is said once, in one line, and the
    file is then left alone: the console keeps every line, and training goes on. (logging's
    own handling would print a traceback for every line that follows.)

    The log is appended to only as a regular file of its own: a symbolic link, a folder or
    a pipe in its place is kept as `train.log.corrupt-N` with one warning, as metrics.csv
    is (see CSVLog), and a new train.log begins; a link is never followed (O_NOFOLLOW)."""

    failed = False

    def __init__(self, filename: Path, encoding: str | None = None) -> None:
        path = Path(filename)
        aside = None
        if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
            aside = set_aside(path)
        super().__init__(path, encoding=encoding)
        if aside is not None:  # the records held so far, this one with them, go to the new file
            logging.getLogger(LOGGER_NAME).warning(
                "%s: it is not a regular file; kept as %s, and the log goes on in a new %s",
                path,
                aside.name,
                path.name,
            )

    def _open(self):
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        descriptor = os.open(self.baseFilename, flags, 0o666)  # the umask gives its mode
        return open(descriptor, "a", encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def flush(self) -> None:
        if not self.failed:
            try:
                super().flush()
            except OSError:
                self.handleError(None)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the file's buffer could not be written out
            self.handleError(None)
            self.stream = None
            logging.Handler.close(self)

    def handleError(self, record: logging.LogRecord | None) -> None:
        if self.failed:
            return
        self.failed = True
        error = sys.exc_info()[1]
        print(
            f"warning: cannot write {self.baseFilename} ({error}); the log goes on in the "
            "console only. Free disk space, or point run.dir at another folder",
            file=sys.stderr,
        )


class CSVLog:
    """A CSV file that training appends rows to, one per epoch or per step.

    `keep_before(position)` drops rows whose `position_column` is at or past `position`:
    a resumed run writes those rows again, so a run killed after writing a row but before
    saving its checkpoint ends up with exactly one copy of every row. A file that is not as
    this version writes it (cut short, edited, another version's columns, not text) is kept
    as `<name>.corrupt-N`, with one warning, and its whole rows go on in a new file.
    """

    def __init__(
        self,
        path: Path,
        columns: tuple[str, ...],
        position_column: str,
        counts: tuple[str, ...] = (),
    ) -> None:
        self.path = path
        self.columns = columns
        self.position_column = position_column
        self.counts = counts  # other columns of whole numbers, never empty

    def read(self) -> CSVRead:
        """The whole rows of the file, and what was left out of it (csv_files.read_rows)."""
        return read_rows(self.path, self.columns, self.position_column, self.counts)

    def keep_before(self, position: int) -> None:
        if not os.path.lexists(self.path):
            return
        read = self.read()
        rows = [row for row in read.rows if int(row[self.position_column]) < position]
        if read.problem is not None:
            aside = set_aside(self.path)
            logging.getLogger(LOGGER_NAME).warning(
                "%s: %s; kept as %s, and the %d whole rows before the resume go on in a new %s",
                self.path,
                read.problem,
                aside.name,
                len(rows),
                self.path.name,
            )
        # Rewritten through a temporary file: a kill at this moment keeps the old rows.
        with atomic_path(self.path) as temporary:
            with temporary.open("w", newline="", encoding="utf-8") as file:
                writer = csv.DictWriter(file, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(rows)

    def write_rows(self, rows: list[dict]) -> None:
        """Append `rows`; a write that fails midway (a full disk) leaves no half row: the
        file is cut back to where it ended, and the error goes on to the caller."""
        new_file = not self.path.exists()
        size_before = 0 if new_file else self.path.stat().st_size
        try:
            with self.path.open("a", newline="", encoding="utf-8") as file:
                writer = csv.DictWriter(file, fieldnames=self.columns)
                if new_file:
                    writer.writeheader()
                writer.writerows(
                    {key: _format(row[key]) if key in row else "" for key in self.columns}
                    for row in rows
                )
        except OSError:
            os.truncate(self.path, size_before)
            raise

    def write(self, row: dict) -> None:
        self.write_rows([row])

    def close(self) -> None:
        """Nothing to release: every write opens and closes the file."""


class MetricsCSV(CSVLog):
    """`metrics.csv`: one row per finished epoch, with the columns of METRIC_COLUMNS."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, METRIC_COLUMNS, position_column="epoch", counts=("step",))

    def keep_epochs_before(self, epoch: int) -> None:
        self.keep_before(epoch)


class LearningRateCSV(CSVLog):
    """`lr.csv`: the learning rate of each optimizer step."""

    NAME = "lr.csv"

    def __init__(self, path: Path) -> None:
        super().__init__(path, LR_COLUMNS, position_column="step")


def read_csv(path: Path) -> list[dict]:
    """The whole rows of a run's metrics.csv, or of its lr.csv (told by the name), as text;
    quietly without the rest (e.g. a last row still being written): see CSVLog."""
    table = LearningRateCSV(path) if path.name == LearningRateCSV.NAME else MetricsCSV(path)
    return table.read().rows


def draws_progress_bar(rank: int) -> bool:
    """A live bar only for a person watching: rank 0 writing to a terminal."""
    return rank == 0 and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


class NoProgressBar:
    """Stands in for a ProgressBar where none is drawn (logs, CI, SLURM, other ranks)."""

    def update(self, count: int = 1) -> None:
        pass

    def due(self) -> bool:
        return False

    def show(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class ProgressBar:
    """A tqdm bar over an epoch's batches, with the running figures as its postfix.

    The loop asks `due()` after each optimizer step and then `show`s the running loss: at
    the first step, and from then on every REFRESH_S seconds. Reading the running loss
    waits for the device (the loop otherwise never does), so it is not read every step;
    once a second costs nothing that can be measured, and is as often as anyone can read.
    """

    REFRESH_S = 1.0

    def __init__(self, bar) -> None:
        self.bar = bar
        self.shown_at: float | None = None

    def update(self, count: int = 1) -> None:
        self.bar.update(count)

    def due(self) -> bool:
        """Whether the figures shown are older than REFRESH_S (or none are shown yet)."""
        return self.shown_at is None or time.monotonic() - self.shown_at >= self.REFRESH_S

    def show(self, text: str) -> None:
        self.bar.set_postfix_str(text)
        self.shown_at = time.monotonic()

    def close(self) -> None:
        self.bar.close()


def progress_bar(
    total: int, initial: int, description: str, enabled: bool
) -> ProgressBar | NoProgressBar:
    """A tqdm bar over an epoch's batches when `enabled`, else a stand-in drawing nothing."""
    if not enabled:
        return NoProgressBar()
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit="batch",
        # The terminal's width, measured at the start of each epoch (a terminal that
        # reports no size, such as some pseudo-terminals, gets 100 columns).
        ncols=shutil.get_terminal_size((100, 24)).columns,
        file=sys.stdout,
    )
    return ProgressBar(bar)


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
