"""The training and evaluation loops.

Losses and accuracies are summed on the device and copied to the host only when a line
is logged: a `.item()` per step would make the CPU wait for the GPU at every step.
"""

import contextlib
import logging
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig

logger = logging.getLogger(__name__.rsplit(".", 1)[0])


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the optimizer steps."""


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint as plain numbers."""

    epoch: int = 0  # epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    global_step: int = 0  # optimizer steps so far
    best_val_acc: float = -1.0
    best_epoch: int = -1
    # Running sums over the batches of `epoch` trained so far (kept across a mid-epoch resume).
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.batch_in_epoch = epoch, 0
        self.loss_sum, self.correct, self.seen = 0.0, 0.0, 0


def train_one_epoch(
    model: nn.Module,
    loader,
    batches_per_epoch: int,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    scheduler,
    step_scheduler_per_batch: bool,
    state: TrainState,
    cfg: TrainConfig,
    device: torch.device,
    autocast,
) -> bool:
    """Train on the rest of the current epoch. Returns True when `cfg.max_steps` was reached.

    `loader` must already be positioned at `state.batch_in_epoch` (see EpochBatchSampler).
    """
    model.train()
    accumulation = cfg.grad_accum_steps
    loss_sum = torch.tensor(state.loss_sum, device=device)
    correct = torch.tensor(state.correct, device=device)
    nonfinite = torch.zeros((), dtype=torch.long, device=device)
    seen = state.seen
    last_log_step, last_log_time = state.global_step, time.perf_counter()

    for batch_index, (images, labels) in enumerate(loader, start=state.batch_in_epoch):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        is_update = (batch_index + 1) % accumulation == 0 or batch_index + 1 == batches_per_epoch
        # Under DDP, gradients are all-reduced only on the micro-batch that updates.
        no_sync = getattr(model, "no_sync", None)
        sync_context = contextlib.nullcontext() if is_update or no_sync is None else no_sync()
        with sync_context:
            with autocast():
                logits = model(images)
                loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
            scaler.scale(loss / accumulation).backward()

        batch_size = labels.size(0)
        loss_sum += loss.detach().float() * batch_size
        correct += (logits.detach().argmax(dim=1) == labels).sum()
        nonfinite += (~torch.isfinite(loss.detach())).long()
        seen += batch_size

        if is_update:
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)  # skipped by an fp16 scaler when gradients overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if step_scheduler_per_batch:
                scheduler.step()
            state.global_step += 1

        state.batch_in_epoch = batch_index + 1
        if not is_update:
            continue
        stop = cfg.max_steps > 0 and state.global_step >= cfg.max_steps
        if state.global_step % cfg.log_every == 0 or stop:
            _check_finite(nonfinite, scaler, last_log_step, state.global_step)
            elapsed = time.perf_counter() - last_log_time
            logger.info(
                "epoch %d step %d  loss %.4f  acc %.3f  lr %.3g  %.0f samples/s",
                state.epoch + 1,
                state.global_step,
                loss_sum.item() / max(seen, 1),
                correct.item() / max(seen, 1),
                optimizer.param_groups[0]["lr"],
                (state.global_step - last_log_step) * batch_size * accumulation / elapsed,
            )
            last_log_step, last_log_time = state.global_step, time.perf_counter()
        if stop:
            break

    _check_finite(nonfinite, scaler, last_log_step, state.global_step)
    state.loss_sum, state.correct, state.seen = loss_sum.item(), correct.item(), seen
    return cfg.max_steps > 0 and state.global_step >= cfg.max_steps


def _check_finite(nonfinite: torch.Tensor, scaler, first_step: int, last_step: int) -> None:
    # An fp16 grad scaler skips steps with overflowing values by design: not an error.
    if not scaler.is_enabled() and nonfinite.item() > 0:
        raise NonFiniteLossError(
            f"the loss became NaN or infinite between optimizer steps {first_step + 1} and "
            f"{last_step}; lower optim.lr or set train.grad_clip (e.g. 1.0)"
        )


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device, autocast) -> torch.Tensor:
    """Sums over this process's share of the data: tensor([loss_sum, correct, count])."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast():
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        totals[0] += loss
        totals[1] += (logits.argmax(dim=1) == labels).sum()
        totals[2] += labels.size(0)
    return totals
