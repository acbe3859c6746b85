"""TensorBoard: the metrics of `metrics.csv` as scalars, a few sample images and the model
graph (tracker=tensorboard). View with `tensorboard --logdir runs`."""

import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from .checkpoint import unwrap
from .csv_files import set_aside

logger = logging.getLogger(__name__.rsplit(".", 1)[0])
# Silenced while TensorBoard works (see trackers.quiet): its errors are said in one line.
LIBRARY_LOGGERS = ("tensorboard",)
SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "samples_per_s")


def open_tracker(
    run_dir: Path,
    model: nn.Module,
    val_loader,
    device: torch.device,
    resumed: bool,
    saved: dict | None = None,
) -> "TensorBoardWriter":
    """The writer of `run_dir/tensorboard`; a new run also gets sample images and the graph.
    (`saved`: nothing to take back, a resumed run adds event files to the same folder.)"""
    folder = run_dir / "tensorboard"
    if os.path.lexists(folder) and (folder.is_symlink() or not folder.is_dir()):
        # Event files go only into a folder of the run's own, never through a link into
        # another: what is there is kept aside, as a metrics.csv that is a link is.
        aside = set_aside(folder)
        logger.warning(
            "%s: it is not a folder of this run; kept as %s, and the events go on in a new %s",
            folder,
            aside.name,
            folder.name,
        )
    tensorboard = TensorBoardWriter(folder)
    if not resumed:
        sample_images = next(iter(val_loader))[0]
        tensorboard.write_samples(sample_images)
        tensorboard.write_graph(model, sample_images.to(device))
    return tensorboard


class TensorBoardWriter:
    """Writes each epoch's metrics as scalars, indexed by the optimizer step."""

    def __init__(self, log_dir: Path) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, row: dict) -> None:
        for key in SCALARS:
            self.writer.add_scalar(key, row[key], global_step=row["step"])
        self.writer.flush()

    def write_samples(self, images: torch.Tensor, count: int = 16) -> None:
        """A grid of the first `count` input images, rescaled to [0, 1] for display."""
        images = images[:count].detach().float().cpu()
        low, high = images.amin(), images.amax()
        self.writer.add_images("samples", (images - low) / (high - low + 1e-8), global_step=0)

    def write_graph(self, model: nn.Module, example: torch.Tensor) -> None:
        """The model graph, traced on one example batch; skipped with a note if tracing fails."""
        try:
            with warnings.catch_warnings():
                # add_graph traces with torch.jit, which warns that it is deprecated.
                warnings.simplefilter("ignore", FutureWarning)
                self.writer.add_graph(unwrap(model), example[:1])
        except Exception as error:  # tracing is best-effort: some models cannot be traced
            logger.info("TensorBoard model graph skipped: %s", str(error).splitlines()[0])

    def state(self) -> dict:
        return {}

    def close(self) -> None:
        self.writer.close()
