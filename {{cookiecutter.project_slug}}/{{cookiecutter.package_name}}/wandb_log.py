"""Weights & Biases (tracker=wandb): each epoch's metrics, the config, and the run's files
(config, manifest, plots, best checkpoint) at the end.

Where it goes, read from the environment variables W&B itself honours:

    WANDB_MODE      offline, the default without WANDB_API_KEY: the run is kept under
                    <run folder>/wandb/ and the end of the run logs the command that
                    uploads it (wandb sync ...); online, the default with WANDB_API_KEY
    WANDB_API_KEY   your key (or `wandb login`, then WANDB_MODE=online)
    WANDB_PROJECT   the project (default: the package name); WANDB_ENTITY the team

The W&B run's id is kept in every checkpoint: a resumed run continues the same W&B run
(`resume="allow"`), offline too, where each start adds a folder that `wandb sync` uploads
into that one run, in order.
"""

import logging
import os
import struct
from pathlib import Path

import torch
import wandb
from google.protobuf.message import DecodeError
from torch import nn
from wandb.proto import wandb_internal_pb2

from .trackers import flat_config, link_artefacts

PACKAGE = __name__.rsplit(".", 1)[0]
logger = logging.getLogger(PACKAGE)
# Silenced while W&B works (see trackers.quiet): its errors are said in one line.
LIBRARY_LOGGERS = ("wandb",)

# A run's transaction log (run-<id>.wandb): a 7-byte header, then blocks of 32 KiB in the
# LevelDB log format, each chunk a 7-byte header (checksum, length, type) and a piece of a
# serialized Record: one piece (FULL) or several (FIRST, MIDDLE..., LAST).
FILE_HEADER, BLOCK, CHUNK_HEADER = 7, 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def mode() -> str:
    """WANDB_MODE, else online with an API key and offline without."""
    return os.environ.get("WANDB_MODE") or (
        "online" if os.environ.get("WANDB_API_KEY") else "offline"
    )


def open_tracker(
    run_dir: Path,
    model: nn.Module,
    val_loader,
    device: torch.device,
    resumed: bool,
    saved: dict | None = None,
) -> "WandbRun":
    """The W&B run of the checkpoint resumed from (or of a start of this run folder killed
    before its first checkpoint), or a new one with the config."""
    run_id = (saved or {}).get("run_id") or killed_run_of(run_dir / "wandb")
    # Read before wandb.init adds this start's folder: what the earlier starts logged.
    logged = logged_steps(run_dir / "wandb", run_id) if run_id else set()
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT") or PACKAGE,
        dir=run_dir,
        name=run_dir.name,
        id=run_id,
        resume="allow" if run_id else None,
        mode=mode(),
        config=None if run_id else flat_config(run_dir),
        # The project logs the console itself (train.log); W&B's own closing lines would
        # name only this start's folder, so the sync command is logged at the end instead.
        settings=wandb.Settings(console="off", quiet=True),
    )
    logger.info("W&B: run %s (%s)%s", run.id, mode(), ", continued" if run_id else "")
    return WandbRun(run, run_dir, logged)


class WandbRun:
    """Writes each metrics.csv row as a history row at its optimizer step."""

    def __init__(self, run, run_dir: Path, logged: set[int]) -> None:
        self.run, self.run_dir, self.logged = run, run_dir, logged
        self.offline = mode() in ("offline", "dryrun")

    def write(self, row: dict) -> None:
        values = {key: value for key, value in row.items() if key != "step"}
        self.run.log(values, step=int(row["step"]))

    def logged_steps(self) -> set[int]:
        return set(self.logged)

    def state(self) -> dict:
        return {"run_id": self.run.id}

    def end_failed(self) -> None:
        """Finish the W&B run as failed (W&B failed during training)."""
        self.run.finish(exit_code=1)

    def close(self) -> None:
        """Add the run's files to the W&B run, finish it, and say how to upload it."""
        for path in link_artefacts(self.run_dir, Path(self.run.dir)):
            self.run.save(str(path), base_path=self.run.dir, policy="now")
        self.run.finish()
        if self.offline:
            logger.info(
                "W&B run kept offline; upload it with: wandb sync %s",
                self.run_dir / "wandb" / f"offline-run-*-{self.run.id}",
            )


def killed_run_of(wandb_dir: Path) -> str | None:
    """The id of the newest start in `wandb_dir` if it never finished (its log has no exit
    record): a start killed before the run folder had a checkpoint."""
    logs = wandb_dir.glob("*run-*-*/run-*.wandb")  # in (offline-)run-<time>-<id> folders
    starts = sorted(logs, key=lambda log: log.parent.name.split("run-", 1)[1])
    if not starts or any(record.HasField("exit") for record in transaction_records(starts[-1])):
        return None
    return starts[-1].parent.name.rsplit("-", 1)[1]


def logged_steps(wandb_dir: Path, run_id: str) -> set[int]:
    """The steps of the history rows that earlier starts of W&B run `run_id` wrote to their
    transaction logs (one folder per start: offline-run-<time>-<id> or run-<time>-<id>).

    W&B flushes that log every few seconds, so a killed start may lack its last rows:
    those are logged again from metrics.csv, and the rows it does hold are not.
    """
    steps = set()
    for log in wandb_dir.glob(f"*run-*-{run_id}/run-{run_id}.wandb"):
        for record in transaction_records(log):
            if record.HasField("history"):
                steps.add(record.history.step.num)
    return steps


def transaction_records(path: Path):
    """The whole records of a transaction log, up to where a kill cut it off."""
    data = path.read_bytes()
    if not data.startswith(b":W&B"):
        return
    position, pieces = FILE_HEADER, b""
    while position + CHUNK_HEADER <= len(data):
        if BLOCK - position % BLOCK < CHUNK_HEADER:  # a block's tail too short for a chunk
            position += BLOCK - position % BLOCK
            continue
        _, length, kind = struct.unpack_from("<IHB", data, position)
        piece = data[position + CHUNK_HEADER : position + CHUNK_HEADER + length]
        position += CHUNK_HEADER + length
        if len(piece) < length or kind not in (FULL, FIRST, MIDDLE, LAST):
            return  # cut off mid-chunk, or zeros where the writer had not yet written
        pieces = piece if kind in (FULL, FIRST) else pieces + piece
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(pieces)
            except DecodeError:
                return
            yield record
