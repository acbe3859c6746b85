"""The run folder: where each file of a run lives, and how a checkpoint leads back to its run.

    runs/<run.name>-<timestamp>/      one run (run.dir names another folder)
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
        eval/<checkpoint>/            what evaluate.py wrote
    runs/latest                       -> the newest run started without run.dir

Only the main process writes here; nothing in this module imports torch, so the entry
points can find a run's files before paying for that import.
"""

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .files import atomic_symlink

logger = logging.getLogger(__name__.rsplit(".", 1)[0])

RUNS = Path("runs")
CHECKPOINTS = "checkpoints"


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
    """`runs/latest` -> this run's folder (a relative symlink, switched atomically)."""
    latest = run_dir.parent / "latest"
    try:
        atomic_symlink(latest, run_dir.name, target_is_directory=True)
    except OSError as error:  # e.g. a filesystem without symlinks: the pointer is a comfort
        logger.warning("could not point %s at this run: %s", latest, error)
