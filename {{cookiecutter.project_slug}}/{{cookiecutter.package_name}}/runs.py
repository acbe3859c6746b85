"""The run folder: where each file of a run lives, and how a checkpoint leads back to its run.

    runs/<run.name>-<timestamp>/      one run (run.dir names another folder)
        run-folder.json               marks the folder as a run folder this project made
                                      (which package, when); see "Whose folder" below
        config.yaml                   the resolved config the run trains with
        run.lock                      held by the run writing here (see run_lock.py)
        manifest.json                 Python/torch/CUDA/cuDNN versions, device, packages, git
                                      commit, data fingerprint (see manifest.py)
        git.diff                      uncommitted changes when the run began (git.resume-N.diff:
                                      at a resume)
        train.log                     the console's lines and more (the resolved config, ...)
        metrics.csv, lr.csv           one row per epoch, one per optimizer step
        normalization.json            mean and std, when computed from the training images
        loss.png, accuracy.png, lr.png
        checkpoints/                  step-N.pt with step-N.pt.sha256; last.pt, best.pt
        eval/<checkpoint>/            what evaluate.py wrote (on other data: beside it,
                                      eval/<checkpoint>-on-<data>-<digest>/)
        export/                       what export.py wrote
    runs/latest                       -> the newest run started without run.dir

Whose folder: a run writes only into a folder that does not exist yet, is empty (a run.lock
aside, when it is a regular file), or holds RUN_MARKER, which the run that made it wrote. A
folder of someone's own files, or a run folder whose marker is gone and checkpoints pruned,
is refused with one line and left as it was. Inside its folder a run never writes through a
symbolic link it did not make: run.lock and checkpoints/ as links are refused, train.log,
metrics.csv, lr.csv and tensorboard/ as links are moved aside with one warning, and the
files it replaces whole are replaced by a rename, which replaces a link, not its target.
A run folder from before the marker existed (config.yaml and checkpoints/step-*.pt) is a run
folder too: a resume takes it on and adds the marker.

Only the main process writes here; nothing in this module imports torch, so the entry
points can find a run's files before paying for that import.
"""

import datetime
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config, ConfigError
from .files import atomic_symlink, atomic_write_text

logger = logging.getLogger(__name__.rsplit(".", 1)[0])

RUNS = Path("runs")
CHECKPOINTS = "checkpoints"
LOCK_FILE = "run.lock"
# The file that makes a folder a run folder of this project (see "Whose folder" above).
RUN_MARKER = "run-folder.json"


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run's files."""

    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def lr(self) -> Path:
        return self.path / "lr.csv"

    @property
    def marker(self) -> Path:
        return self.path / RUN_MARKER


def check_resume_target(cfg: Config, is_main: bool, agree: Callable[[Any], Any]) -> None:
    """ConfigError when run.resume names a checkpoint or run folder that does not exist:
    said as such, before the folder it would lead to is taken for someone else's (the main
    process looks, and `agree` gives every process its answer)."""
    resume = cfg.run.resume
    missing = None
    if is_main and resume not in (None, "auto") and not os.path.lexists(resume):
        missing = f"run.resume={resume} does not exist; give a checkpoint file or a run folder"
    missing = agree(missing)
    if missing is not None:
        raise ConfigError(missing)


def check_run_folder(folder: Path) -> None:
    """ConfigError, in one line with the ways forward, unless a run may write `folder`
    (see "Whose folder" above). Reads the folder's listing only: nothing is changed."""
    if not folder.is_dir():
        return  # missing: the run makes it (a path through a file fails as it is made)
    if (folder / CHECKPOINTS).is_symlink():
        raise ConfigError(
            f"{folder / CHECKPOINTS} is a symbolic link, and a run never writes through one "
            "(its checkpoints would be saved, and older ones deleted, in the folder it points "
            "to); put that folder in place of the link, or start a new run from a checkpoint "
            "in it with run.resume=CHECKPOINT run.fork=true"
        )
    if is_run_folder(folder) or not _names_besides_lock_file(folder):
        return
    raise ConfigError(
        f"{folder} is not a run folder of this project (it has no {RUN_MARKER}) and not "
        "empty: a run writes only into a new or empty folder or its own; give run.dir "
        "another folder (or leave it out), or to go on from a checkpoint kept there, start "
        "a new run from it with run.resume=CHECKPOINT run.fork=true"
    )


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` is a run folder of this project: it holds RUN_MARKER, or it is one
    from before the marker existed (config.yaml and step checkpoints)."""
    if (folder / RUN_MARKER).is_file():
        return True
    return (folder / "config.yaml").is_file() and any((folder / CHECKPOINTS).glob("step-*.pt"))


def _names_besides_lock_file(folder: Path) -> list[str]:
    """The names in `folder` but a run.lock that is a regular file (one left by a run that
    failed early); a link or a folder by that name counts: it is not the project's."""
    with os.scandir(folder) as entries:
        return [
            entry.name
            for entry in entries
            if entry.name != LOCK_FILE or not entry.is_file(follow_symlinks=False)
        ]


def mark_run_folder(run: RunFolder) -> None:
    """Write RUN_MARKER into the run folder, if it has none yet (the main process, once
    the run writes its first files)."""
    if run.marker.is_file():
        return
    write_marker(run.marker, "run folder", "train.py")


def write_marker(path: Path, kind: str, command: str) -> None:
    """The file that marks a folder as a `kind` ("run folder", "sweep folder") that
    `command` of this project made and may write again."""
    marker = {
        "kind": kind,
        "made_by": f"{__package__} {command}",
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "note": f"{command} writes only into {kind}s that hold this file, or new ones",
    }
    atomic_write_text(path, json.dumps(marker, indent=2) + "\n")


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder of a checkpoint: `runs/X/checkpoints/best.pt` -> `runs/X` (a checkpoint
    kept elsewhere: its own folder). A run folder, or its checkpoints folder, leads to itself."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        return checkpoint.parent if checkpoint.name == CHECKPOINTS else checkpoint
    folder = checkpoint.parent
    return folder.parent if folder.name == CHECKPOINTS else folder


def resolve_run_dir(cfg: Config) -> Path:
    """The run folder: `run.dir`, the run that `run.resume` names, or a new one."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    if cfg.run.fork:  # a new run that starts from another's weights
        return new_run_dir(cfg.run.name)
    if cfg.run.resume == "auto":
        newest = newest_run()
        if newest is None:
            logger.info("run.resume=auto: no run in %s to continue yet, starting a new one", RUNS)
            return new_run_dir(cfg.run.name)
        return newest
    if cfg.run.resume:
        return run_dir_of(Path(cfg.run.resume))
    return new_run_dir(cfg.run.name)


def newest_run() -> Path | None:
    """The run folder in runs/ whose newest checkpoint was written last."""
    newest, newest_time = None, -1.0
    for folder in RUNS.glob("*/"):
        if folder.is_symlink():  # runs/latest
            continue
        for checkpoint in (folder / CHECKPOINTS).glob("step-*.pt"):
            written = checkpoint.stat().st_mtime
            if written > newest_time:
                newest, newest_time = folder, written
    return newest


def new_run_dir(name: str) -> Path:
    """`runs/<name>-<timestamp>`, never the folder of another run."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = RUNS / f"{name}-{stamp}"
    suffix = 2
    while folder.exists():  # two runs started in the same second never share a folder
        folder = RUNS / f"{name}-{stamp}-{suffix}"
        suffix += 1
    return folder


def point_latest_at(run_dir: Path) -> None:
    """`runs/latest` -> this run's folder (a relative symlink, switched atomically).

    A run named through a link (run.resume=runs/latest) is pointed at as the folder the
    link leads to: pointed at by its own name, runs/latest would lead to itself."""
    latest = run_dir.parent / "latest"
    if os.path.lexists(latest) and not latest.is_symlink():
        logger.warning("%s is not the link this project makes: left as it is", latest)
        return
    target = os.path.relpath(run_dir.resolve(), latest.parent.resolve())
    try:
        atomic_symlink(latest, target, target_is_directory=True)
    except OSError as error:  # e.g. a filesystem without symlinks: the pointer is a comfort
        logger.warning("could not point %s at this run: %s", latest, error)
