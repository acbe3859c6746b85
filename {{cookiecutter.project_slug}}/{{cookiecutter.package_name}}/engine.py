"""The training and evaluation loops.

Losses and predictions of each batch stay on the device, and are folded into the running
sums only every few dozen steps, when a line is logged and before a checkpoint: a `.item()`
per step would make the CPU wait for the GPU at every step, and even on a CPU, where
nothing waits, each small tensor operation per step costs 5-10 us.
"""

import contextlib
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .device import Precision
from .ema import WeightAverage
from .log import NoProgressBar

logger = logging.getLogger(__name__.rsplit(".", 1)[0])

# Batches recorded before their losses and predictions are folded into the running sums
# at the latest (also without a log line due): bounds the memory they hold on the device.
MAX_PENDING_BATCHES = 64


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the optimizer step."""


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint as plain numbers."""

    epoch: int = 0  # epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    global_step: int = 0  # optimizer steps so far
    best_val_acc: float = -1.0
    best_epoch: int = -1
    # Running sums over the batches of `epoch` trained so far (kept across a mid-epoch
    # resume), up to the batches still pending (see `record`).
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: int = 0
    first_nonfinite_step: int = -1  # first optimizer step whose loss was NaN or infinite
    schedule_start_epoch: int = 0  # where the learning-rate schedule began (run.extend)

    def __post_init__(self) -> None:
        # (loss, predictions, labels, optimizer step) of batches not yet in the sums
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []

    @property
    def epochs_since_best(self) -> int:
        """Finished epochs since the one with the best validation accuracy, counted from
        the start of the schedule in use at most (an extended run waits afresh)."""
        since = max(self.best_epoch, self.schedule_start_epoch - 1)
        return self.epoch - 1 - since if since >= 0 else 0

    def as_dict(self) -> dict:
        self.fold_pending()
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.batch_in_epoch = epoch, 0
        self.loss_sum, self.correct, self.seen = 0.0, 0.0, 0
        self.pending.clear()

    def record(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep a batch's loss and predictions on the device, for `fold_pending`."""
        predictions = logits.detach().argmax(dim=1)
        self.pending.append((loss.detach(), predictions, labels, self.global_step + 1))
        self.seen += labels.size(0)
        if len(self.pending) >= MAX_PENDING_BATCHES:
            self.fold_pending()

    def fold_pending(self) -> None:
        """Add the pending batches to the running sums (one copy to the host for all).

        The loss sum is a Python float that gains loss * batch size batch after batch, in
        order: the same float64 additions as one per step, so a resumed run's sums equal an
        uninterrupted run's wherever the folds fell.
        """
        if not self.pending:
            return
        losses, predictions, labels, steps = zip(*self.pending, strict=True)
        self.pending.clear()
        correct = (torch.cat(predictions) == torch.cat(labels)).sum()
        losses = torch.stack(losses).double().tolist()  # waits for the device, once
        for loss, batch_labels, step in zip(losses, labels, steps, strict=True):
            self.loss_sum += loss * batch_labels.size(0)
            if self.first_nonfinite_step < 0 and not math.isfinite(loss):
                self.first_nonfinite_step = step
        self.correct += correct.item()

    def check_finite(self, fp16_scaler_enabled: bool) -> None:
        """Raise if a loss was NaN/inf, unless an fp16 grad scaler skipped that step.

        (Skipping steps whose values overflow is how an fp16 scaler works: not an error.)
        """
        self.fold_pending()
        if self.first_nonfinite_step >= 0 and not fp16_scaler_enabled:
            raise NonFiniteLossError(
                f"the loss became NaN or infinite at optimizer step {self.first_nonfinite_step}"
            )


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """`torch.compile(model)`, or `model` itself with a warning where it cannot compile.

    Compilation happens at the first forward pass; a graph that fails then runs eagerly
    (dynamo's suppress_errors) instead of stopping the run.
    """
    import torch._dynamo

    reason = None
    if not torch._dynamo.is_dynamo_supported():
        reason = f"torch.compile does not support this Python ({sys.version.split()[0]})"
    elif device.type == "cpu" and not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        reason = "no C++ compiler (c++, g++ or clang++) on PATH; install one"
    if reason:
        logger.warning("train.compile: %s; training without it", reason)
        return model
    torch._dynamo.config.suppress_errors = True
    logger.info("train.compile: the first step compiles the model (~20 s on a CPU)")
    return torch.compile(model)


@dataclass
class Trainer:
    """The model and everything that updates it, taken by the loop as one."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step_scheduler_per_batch: bool  # False: the scheduler steps once per epoch, in train.py
    precision: Precision
    cfg: TrainConfig
    device: torch.device
    ema: WeightAverage | None = None  # the weights' moving average (train.ema_decay)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def train_one_epoch(
    trainer: Trainer,
    loader,
    batches_per_epoch: int,
    state: TrainState,
    after_step: Callable[[], bool] = lambda: False,
    progress=None,
) -> None:
    """Train on the rest of the current epoch, or until `after_step()` returns True.

    `loader` must already be positioned at `state.batch_in_epoch` (see EpochBatchSampler).
    `after_step` runs after every optimizer step (checkpoints, stop requests, max_steps).
    `progress` is a bar of log.progress_bar; with a live bar, the periodic step lines go
    to the log file only, and the bar shows the running loss and accuracy from the first
    step on, and at the end those of the whole epoch.
    """
    model, cfg, device, scaler = (
        trainer.model,
        trainer.cfg,
        trainer.device,
        trainer.precision.scaler,
    )
    model.train()
    accumulation = cfg.grad_accum_steps
    speed = SpeedMeter(state.global_step)
    for batch_index, (images, labels) in enumerate(loader, start=state.batch_in_epoch):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        is_update = (batch_index + 1) % accumulation == 0 or batch_index + 1 == batches_per_epoch
        # Under DDP, gradients are all-reduced only on the micro-batch that updates.
        no_sync = getattr(model, "no_sync", None)
        sync_context = contextlib.nullcontext() if is_update or no_sync is None else no_sync()
        with sync_context:
            with trainer.precision.autocast():
                logits = model(images)
                loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
            trainer.precision.scaler.scale(
                loss / accumulation if accumulation > 1 else loss
            ).backward()

        state.record(loss, logits, labels)  # NaN losses are found when folded: no sync
        state.batch_in_epoch = batch_index + 1
        if progress is not None:
            progress.update(1)
        if not is_update:
            continue
        optimizer_step(trainer)
        state.global_step += 1
        if state.global_step % cfg.log_every == 0:
            samples = labels.size(0) * accumulation
            log_progress(trainer, state, speed.samples_per_s(state.global_step, samples), progress)
        elif progress is not None and progress.due():
            show_running_figures(trainer, state, progress)
        if after_step():
            break
    state.check_finite(scaler.is_enabled())
    if progress is not None:  # the bar ends on the figures of all the epoch's batches
        show_running_figures(trainer, state, progress)


def optimizer_step(trainer: Trainer) -> None:
    """Clip, step (skipped by an fp16 scaler when gradients overflowed), zero the gradients."""
    scaler, optimizer = trainer.precision.scaler, trainer.optimizer
    if trainer.cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        # The norm of what this step moves: in fine-tuning's head-only phase the backbone's
        # groups have an lr of 0, and their gradients would only shrink the classifier's.
        moving = [p for group in optimizer.param_groups if group["lr"] > 0 for p in group["params"]]
        nn.utils.clip_grad_norm_(moving, trainer.cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if trainer.step_scheduler_per_batch:
        trainer.scheduler.step()
    if trainer.ema is not None:
        trainer.ema.update()


class SpeedMeter:
    """Samples per second between two log lines."""

    def __init__(self, step: int) -> None:
        self.step, self.time = step, time.perf_counter()

    def samples_per_s(self, step: int, samples_per_step: int) -> float:
        now = time.perf_counter()
        speed = (step - self.step) * samples_per_step / (now - self.time)
        self.step, self.time = step, now
        return speed


def log_progress(trainer: Trainer, state: TrainState, samples_per_s: float, progress) -> None:
    """The running loss and accuracy: a log line, and the progress bar's postfix."""
    state.check_finite(trainer.precision.scaler.is_enabled())
    loss_now = state.loss_sum / max(state.seen, 1)
    acc_now = state.correct / max(state.seen, 1)
    logger.info(
        "epoch %d step %d  loss %.4f  acc %.3f  lr %.3g  %.0f samples/s",
        state.epoch + 1,
        state.global_step,
        loss_now,
        acc_now,
        trainer.lr,
        samples_per_s,
        extra={"console": progress is None or isinstance(progress, NoProgressBar)},
    )
    if progress is not None:
        show_running_figures(trainer, state, progress)


def show_running_figures(trainer: Trainer, state: TrainState, progress) -> None:
    """The running loss and accuracy of the epoch so far, on the progress bar (reading
    them waits for the device: see log.ProgressBar for how often)."""
    state.fold_pending()
    seen = max(state.seen, 1)
    loss, accuracy = state.loss_sum / seen, state.correct / seen
    progress.show(f"loss {loss:.4f} acc {accuracy:.3f} lr {trainer.lr:.3g}")


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader, device: torch.device, precision: Precision, num_classes: int
) -> torch.Tensor:
    """Sums over this process's share of the data: tensor([loss_sum, correct, count,
    correct of class 0, ..., of class C-1, count of class 0, ..., of class C-1])."""
    model.eval()
    totals = torch.zeros(3 + 2 * num_classes, dtype=torch.float64, device=device)
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        hits = logits.argmax(dim=1) == labels
        totals[0] += loss
        totals[1] += hits.sum()
        totals[2] += labels.size(0)
        totals[3 : 3 + num_classes] += torch.bincount(labels[hits], minlength=num_classes)
        totals[3 + num_classes :] += torch.bincount(labels, minlength=num_classes)
    return totals


class PerClass:
    """Validation accuracy per class, from `evaluate`'s per-class sums (over all ranks)."""

    # A largest class this many times the smallest makes the epoch line name the weakest.
    IMBALANCE = 1.5

    def __init__(self, classes: list[str], sums: torch.Tensor) -> None:
        correct, counts = sums.view(2, len(classes)).tolist()
        self.classes, self.correct, self.counts = classes, correct, counts

    @property
    def balanced_accuracy(self) -> float:
        """The mean of the per-class accuracies (of the classes with validation images)."""
        accuracies = [
            hit / count for hit, count in zip(self.correct, self.counts, strict=True) if count
        ]
        return sum(accuracies) / max(len(accuracies), 1)

    def summary(self) -> str:
        """`balanced acc B, weakest NAME A` where the classes are imbalanced, else ''."""
        present = [count for count in self.counts if count]
        if not present or max(present) < self.IMBALANCE * min(present):
            return ""
        accuracy, name = min(
            (hit / count, name)
            for name, hit, count in zip(self.classes, self.correct, self.counts, strict=True)
            if count
        )
        return f"  balanced acc {self.balanced_accuracy:.4f}, weakest {name} {accuracy:.4f}"
