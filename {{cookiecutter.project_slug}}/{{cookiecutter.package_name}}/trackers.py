"""Where each epoch's metrics go: `metrics.csv` always, plus the project's tracker.

A tracker is a module of its own (tensorboard_log.py, mlflow_log.py or wandb_log.py, after
the `tracker` answer), which the post-generation hook deletes when another tracker was
chosen. Each has `open_tracker(run_dir, model, val_loader, device, resumed, saved)`, `saved`
being the state it gave the checkpoint now resumed (None for a new run), and returns an
object with `write(row)` (one metrics.csv row per epoch), `state()` (plain types kept in every
checkpoint under "trackers", e.g. the tracker's run id, so that a resume, a torchrun restart
or a SLURM requeue continues the same tracker run), `close()` and, where the tracker can
tell, `logged_steps()`: the optimizer steps whose rows its run already holds.

A tracker is a guest of the training run: an error of its library or a server that cannot
be reached costs one warning, saying what failed (its store locked or read-only, its server
unreachable) where the error tells, and switches that tracker off; training goes on. At the
end the tracker's run is marked failed (`end_failed()`, where a tracker has runs), or a
second warning says it could not be. The libraries' own log lines are silenced while they
work (a module's LIBRARY_LOGGERS): their tracebacks would bury that one line. A tracker
whose package is not installed is one warning naming the pip command.
"""

import errno
import logging
import os
import shutil
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from torch import nn

from .errors import missing_package
from .features import feature_module
from .log import MetricsCSV, read_csv
from .yaml_files import flatten

logger = logging.getLogger(__name__.rsplit(".", 1)[0])

TRACKER_MODULES = ("tensorboard_log", "mlflow_log", "wandb_log")
# The metrics.csv columns that count rows rather than measure them.
POSITION_COLUMNS = ("epoch", "step")
# What a tracker's failure was, told by words of its error (in lower case) or its errno.
PROBLEMS = (
    (("database is locked", "database table is locked"), "its store is locked by another process"),
    (("readonly database", "read-only", "permission denied"), "its store is read-only"),
    (
        (
            "connection refused",
            "max retries exceeded",
            "failed to establish a new connection",
            "name or service not known",
            "temporary failure in name resolution",
            "network is unreachable",
            "timed out",
        ),
        "its server cannot be reached",
    ),
)
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
LONGEST_REASON = 300


def open_trackers(
    run_dir: Path,
    first_epoch: int,
    resume: tuple[Path, dict] | None,
    model: nn.Module,
    val_loader,
    device: torch.device,
) -> list:
    """metrics.csv (rows from `first_epoch` on dropped: a resumed run writes them again)
    and the trackers this project has; `resume`: the checkpoint the run continues, if any.

    A tracker that is resumed first gets the metrics.csv rows its run lacks (a killed run's
    tracker may not have flushed its last rows), and later skips the rows it already has
    (a run killed after its tracker wrote a row, but before the checkpoint, writes it again).
    """
    metrics = MetricsCSV(run_dir / "metrics.csv")
    metrics.keep_epochs_before(first_epoch)
    saved = resume[1].get("trackers", {}) if resume is not None else {}
    earlier_rows = [numeric_row(row) for row in read_csv(run_dir / "metrics.csv")]
    trackers = [metrics]
    for name in TRACKER_MODULES:
        try:
            module = feature_module(name)
        except ModuleNotFoundError as error:  # the tracker's package is not installed
            if missing_package(error) is None:
                raise
            short = name.removesuffix("_log")
            logger.warning("tracker %s is off, training goes on: %s", short, missing_package(error))
            continue
        if module is None:
            continue
        tracker = GuardedTracker(name, saved.get(name))
        tracker.open(module, run_dir, model, val_loader, device, resume is not None)
        tracker.catch_up(earlier_rows)
        trackers.append(tracker)
    return trackers


def tracker_states(trackers: list) -> dict:
    """What the checkpoint keeps of each tracker: {module name: its state()}."""
    return {tracker.name: tracker.state() for tracker in trackers if hasattr(tracker, "state")}


class GuardedTracker:
    """One tracker of the run; its first failure is logged in one line and switches it off."""

    def __init__(self, name: str, saved: dict | None) -> None:
        self.name = name
        self.tracker = None
        self.failed = None  # the tracker that failed, to mark its run failed at the end
        self.library_loggers: tuple[str, ...] = ()
        self.saved = saved
        self.last_state = dict(saved or {})  # kept when the tracker fails: a resume retries
        self.logged: set[int] | None = None  # None: the tracker cannot tell

    def open(self, module, run_dir: Path, model, val_loader, device, resumed: bool) -> None:
        self.library_loggers = tuple(getattr(module, "LIBRARY_LOGGERS", ()))
        self.tracker = self.call(
            "start", module.open_tracker, run_dir, model, val_loader, device, resumed, self.saved
        )
        if self.tracker is not None and hasattr(self.tracker, "logged_steps"):
            self.logged = self.call("read its run", self.tracker.logged_steps)

    def catch_up(self, rows: list[dict]) -> None:
        """Write the rows of metrics.csv that the tracker's run does not hold yet."""
        if self.logged is not None:
            for row in rows:
                self.write(row)

    def write(self, row: dict) -> None:
        if self.logged is not None and row["step"] in self.logged:
            return  # written before a kill that the checkpoint resumed from predates
        if self.tracker is not None:
            self.call("write", self.tracker.write, row)
            if self.logged is not None:
                self.logged.add(row["step"])

    def state(self) -> dict:
        if self.tracker is not None:
            self.last_state = self.call("report its state", self.tracker.state) or self.last_state
        return self.last_state

    def close(self) -> None:
        """Finish the tracker's run; one that failed on the way is marked failed."""
        if self.tracker is not None:
            self.call("finish", self.tracker.close)
        if self.failed is None or not hasattr(self.failed, "end_failed"):
            return
        try:
            with quiet(self.library_loggers):
                self.failed.end_failed()
        except Exception as error:  # the tracker is still out of reach: say so, once
            logger.warning(
                "tracker %s: its run could not be marked failed (%s); it shows as running",
                self.name.removesuffix("_log"),
                reason(error),
            )

    def call(self, action: str, function, *args):
        """`function(*args)`, or None, a warning and this tracker switched off if it fails."""
        try:
            with quiet(self.library_loggers):
                return function(*args)
        except Exception as error:  # any failure of a tracker's library costs only the tracker
            problem = what_failed(error)
            logger.warning(
                "tracker %s failed to %s%s, training goes on without it: %s",
                self.name.removesuffix("_log"),
                action,
                f" ({problem})" if problem else "",
                reason(error),
            )
            self.failed, self.tracker = self.tracker, None
            return None


@contextmanager
def quiet(names: Iterable[str]):
    """Silence the loggers `names` (and theirs below) for a while: a tracker's library logs
    its own tracebacks of an error that the project says in one line."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def what_failed(error: BaseException) -> str | None:
    """The tracker's store locked or read-only, or its server unreachable, where the error
    (or one it was raised from) says so; None where it does not tell."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in READ_ONLY_ERRNOS:
            return "its store is read-only"
        if isinstance(error, ConnectionError):
            return "its server cannot be reached"
        text = str(error).lower()
        for words, problem in PROBLEMS:
            if any(word in text for word in words):
                return problem
        error = error.__cause__ or error.__context__
    return None


def reason(error: BaseException) -> str:
    """The first line of the error's message, bounded (a library may quote a whole query)."""
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    return text if len(text) <= LONGEST_REASON else text[: LONGEST_REASON - 3] + "..."


def numeric_row(row: dict) -> dict:
    """A metrics.csv row read back as numbers (epoch and step as int); empty cells dropped."""
    converted = {}
    for key, text in row.items():
        if text not in (None, ""):
            converted[key] = int(text) if key in POSITION_COLUMNS else float(text)
    return converted


def flat_config(run_dir: Path) -> dict[str, object]:
    """The run's config.yaml as {"optim.lr": 0.01, ...}: settings a tracker can compare."""
    path = run_dir / "config.yaml"
    config = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return flatten(config or {})


def link_artefacts(run_dir: Path, folder: Path) -> list[Path]:
    """Put the run's files worth keeping with its tracker run into `folder`: config.yaml,
    manifest.json, the plots and the best checkpoint as checkpoints/best.pt (with its
    weights file where they are kept beside it). Hard links where possible (free, and
    untouched when the run later deletes an old step file), copies elsewhere.

    Returns the paths written under `folder`.
    """
    wanted = [run_dir / "config.yaml", run_dir / "manifest.json", *sorted(run_dir.glob("*.png"))]
    placed = {path.name: path for path in wanted if path.is_file()}
    best = run_dir / "checkpoints" / "best.pt"
    if best.exists():
        placed["checkpoints/best.pt"] = best.resolve()
        weights = best.resolve().with_suffix(".safetensors")
        if weights.is_file():
            placed["checkpoints/best.safetensors"] = weights
    written = []
    for name, source in placed.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another filesystem, or one without hard links
            shutil.copyfile(source, target)
        written.append(target)
    return written
