"""Where each epoch's metrics go: `metrics.csv` always, plus the project's tracker.

A tracker is a module of its own (tensorboard_log.py for tracker=tensorboard), which the
post-generation hook deletes when another tracker was chosen. Each has
`open_tracker(run_dir, model, val_loader, device, resumed)`, returning an object with
`write(row)` (one metrics.csv row per epoch) and `close()`.
"""

from pathlib import Path

import torch
from torch import nn

from .features import feature_module
from .log import MetricsCSV

TRACKER_MODULES = ("tensorboard_log",)


def open_trackers(
    run_dir: Path,
    first_epoch: int,
    resumed: bool,
    model: nn.Module,
    val_loader,
    device: torch.device,
) -> list:
    """metrics.csv (rows from `first_epoch` on dropped: a resumed run writes them again)
    and the trackers this project has; `resumed`: whether the run continues a checkpoint."""
    metrics = MetricsCSV(run_dir / "metrics.csv")
    metrics.keep_epochs_before(first_epoch)
    trackers = [metrics]
    for name in TRACKER_MODULES:
        module = feature_module(name)
        if module is not None:
            trackers.append(module.open_tracker(run_dir, model, val_loader, device, resumed))
    return trackers
