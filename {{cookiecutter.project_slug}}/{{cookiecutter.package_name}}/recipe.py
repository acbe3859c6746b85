"""Automatic choices: the settings left null (`auto`), decided once at the start of a run.

Each is made from the data and the machine, logged once with its reason (a line starting
"auto:"), and written, resolved, into the run's config.yaml and every checkpoint. A resumed
run takes them from its checkpoint, so it continues exactly as it started; a value the user
sets always wins. The rules, in one place:

- train.threads: torch's default, shared out among the processes of a job on one machine,
  and no more than the cores other work leaves free at the start (device.automatic_threads);
- data.num_workers: 0 on machines of up to 2 cores, where decoding in the training process
  measured fastest (bench 6d), else one worker per core but one, up to 8;
- data.cache: on when the decoded images take at most a quarter of the free memory
  (decided in data/cache.py, where the images' size is known);
- data.batch_size: 128, or for a small training set the power of 2 that gives it about 16
  batches an epoch, at least 16: few images still make enough optimizer steps;
- optim.lr: 0.01 * sqrt(batch size / 128), the square-root rule for Adam-type optimizers,
  with the batch that runs: data.batch_size, or all of this process's share of the training
  set where that is smaller (one batch an epoch, see data/loaders.py); with model.pretrained
  a tenth of that, for AdamW and SGD alike (0.001 at batch 128, the usual AdamW fine-tuning
  rate): pretrained weights are already near a good solution, and a from-scratch rate would
  throw much of what they learnt away in the first steps;
- train.epochs: 60 * sqrt(1000 / images), between 20 and 100: more passes over a small set,
  and at least 20 over a large one (bench/README.md, "The recipe benchmark": fewer lost
  1-2 points on the larger collections); with model.pretrained 20 * sqrt(1000 / images),
  between 8 and 30: pretrained features need fewer passes, only to adapt, not to be learnt;
- train.freeze_epochs (the head-only phase, see optim.py): with model.pretrained a tenth of
  train.epochs, at least 1 (none in a run of one epoch): a new, random classifier first
  learns from the pretrained features, before its large early errors reach the backbone;
  from scratch 0, as there are no features worth keeping yet;
- optim.backbone_lr_ratio: with model.pretrained 0.1, so the pretrained layers change
  slowly while the new classifier learns at optim.lr; from scratch 1 (the same rate);
- train.early_stop_patience: a quarter of the epochs, at least 5; never with fewer than
  MIN_VAL_IMAGES validation images, too few to tell an improvement from noise.
"""

import copy
import logging
import math
import os
from typing import Any

import torch

from .config import Config, ConfigError
from .data import DataBundle
from .device import automatic_threads, busy_cores, cpu_cores, processes_on_this_machine
from .log import counted, log_choice

logger = logging.getLogger(__name__.rsplit(".", 1)[0])

AUTOMATIC = (
    "data.image_size",
    "data.flip",
    "train.threads",
    "data.num_workers",
    "data.cache",
    "data.batch_size",
    "optim.lr",
    "train.epochs",
    "train.early_stop_patience",
    "train.freeze_epochs",
    "optim.backbone_lr_ratio",
)
# Null means the data's own or a default (computed statistics, bilinear), unless a run
# with pretrained weights took the weights' own values (data/survey.py): either way, a
# resumed run keeps what it recorded when they are left null.
FROM_THE_WEIGHTS = ("data.mean", "data.std", "data.interpolation")
MIN_VAL_IMAGES = 20
MIN_PATIENCE = 5  # epochs without a better validation accuracy before stopping early
BASE_BATCH, BASE_LR = 128, 0.01
PRETRAINED_LR_FACTOR = 0.1  # of the from-scratch learning rate, with model.pretrained


def with_setting(cfg: Config, key: str, value: Any) -> Config:
    """A copy of `cfg` with `key` set: the caller's config is never changed."""
    cfg = copy.deepcopy(cfg)
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)
    return cfg


def choose_machine_settings(cfg: Config) -> Config:
    """train.threads and data.num_workers, from this machine's cores."""
    processes_here = processes_on_this_machine()
    cores = max((os.cpu_count() or 1) // processes_here, 1)
    if cfg.train.threads is None:
        threads, reason = automatic_threads(
            torch.get_num_threads(), processes_here, cpu_cores(), busy_cores
        )
        cfg = with_setting(cfg, "train.threads", threads)
        log_choice("train.threads", threads, reason)
    if cfg.data.num_workers is None:
        workers = 0 if cores <= 2 else min(cores - 1, 8)
        cfg = with_setting(cfg, "data.num_workers", workers)
        log_choice("data.num_workers", workers, f"{cores} CPU cores for this process")
    return cfg


def choose_data_settings(cfg: Config, data: DataBundle, world_size: int) -> Config:
    """data.cache as the data was built, then the settings that depend on its size."""
    if cfg.data.cache is None:
        cfg = with_setting(cfg, "data.cache", data.cached)
    # Each process trains on its share, padded to the same size on every one (as
    # GlobalBatchShardSampler makes it).
    return choose_training_settings(cfg, math.ceil(len(data.train) / world_size), len(data.val))


def choose_training_settings(cfg: Config, train_images: int, val_images: int) -> Config:
    """Batch size, learning rate, epochs and patience, from the size of the data, then the
    fine-tuning phases (choose_fine_tuning).

    `train_images` is this process's share of the training set (all of it in one process).
    """
    if cfg.data.batch_size is None:
        batch = BASE_BATCH
        if train_images < 16 * BASE_BATCH:
            batch = max(2 ** math.floor(math.log2(max(train_images / 16, 1))), 16)
        cfg = with_setting(cfg, "data.batch_size", batch)
        log_choice("data.batch_size", batch, counted(train_images, "training image"))
    if cfg.optim.lr is None:
        batch, reason = running_batch(cfg.data.batch_size, train_images)
        lr = round(BASE_LR * math.sqrt(batch / BASE_BATCH), 6)
        if cfg.model.pretrained:
            lr = round(lr * PRETRAINED_LR_FACTOR, 7)
            reason += "; model.pretrained: a tenth of the from-scratch rate"
        cfg = with_setting(cfg, "optim.lr", lr)
        log_choice("optim.lr", lr, reason)
    if cfg.train.epochs is None:
        epochs = automatic_epochs(train_images, cfg.model.pretrained)
        cfg = with_setting(cfg, "train.epochs", epochs)
        reason = counted(train_images, "training image")
        if cfg.model.pretrained:
            reason += "; model.pretrained: fewer passes, 8 to 30"
        log_choice("train.epochs", epochs, reason)
    if cfg.train.early_stop_patience is None:
        cfg = with_setting(cfg, "train.early_stop_patience", _patience(cfg, val_images))
    return choose_fine_tuning(cfg)


def automatic_epochs(train_images: int, pretrained: bool) -> int:
    """train.epochs for this many training images (see the module docstring)."""
    if pretrained:
        return min(max(round(20 * math.sqrt(1000 / max(train_images, 1))), 8), 30)
    return min(max(round(60 * math.sqrt(1000 / max(train_images, 1))), 20), 100)


def choose_fine_tuning(cfg: Config) -> Config:
    """train.freeze_epochs and optim.backbone_lr_ratio (see the module docstring), once
    train.epochs is known; a head-only phase must leave the whole network an epoch."""
    pretrained, epochs = cfg.model.pretrained, cfg.train.epochs
    if cfg.train.freeze_epochs is None:
        freeze = min(max(round(epochs / 10), 1), epochs - 1) if pretrained else 0
        reason = "no model.pretrained: the whole network trains from the start"
        if pretrained:
            reason = (
                f"model.pretrained: the new classifier trains alone for a tenth of "
                f"{counted(epochs, 'epoch')}, at least 1, before the whole network"
            )
            if freeze == 0:
                reason = "model.pretrained, but one epoch leaves no room for a head-only phase"
        cfg = with_setting(cfg, "train.freeze_epochs", freeze)
        log_choice("train.freeze_epochs", freeze, reason)
    if cfg.train.freeze_epochs >= epochs:
        raise ConfigError(
            f"train.freeze_epochs={cfg.train.freeze_epochs} leaves no epoch of "
            f"train.epochs={epochs} to train the whole network; set train.freeze_epochs "
            "below train.epochs (0: the whole network from the start)"
        )
    if cfg.optim.backbone_lr_ratio is None:
        ratio = 0.1 if pretrained else 1.0
        reason = "no model.pretrained: every layer learns at optim.lr"
        if pretrained:
            reason = "model.pretrained: the pretrained layers at a tenth of optim.lr"
        cfg = with_setting(cfg, "optim.backbone_lr_ratio", ratio)
        log_choice("optim.backbone_lr_ratio", ratio, reason)
    return cfg


def running_batch(batch_size: int, train_images: int) -> tuple[int, str]:
    """The batch each step trains on, and how it came about: data.batch_size, or the whole
    share of `train_images` when that is smaller (the loader then makes one batch of it)."""
    if batch_size <= train_images:
        return batch_size, f"batch size {batch_size}"
    running = max(train_images, 1)
    return running, (
        f"batch size {running}: data.batch_size={batch_size} is more than the {running} "
        "training images of this process, so each step trains on all of them"
    )


def _patience(cfg: Config, val_images: int) -> int:
    if val_images < MIN_VAL_IMAGES:
        logger.warning(
            "auto: train.early_stop_patience=0: the validation split has %s, too few "
            "to stop early on; raise data.val_fraction (or add images to val/) for more, or "
            "set train.early_stop_patience=N to stop on them anyway",
            counted(val_images, "image"),
        )
        return 0
    epochs = cfg.train.epochs
    patience = max(math.ceil(epochs / 4), MIN_PATIENCE)
    reason = f"a quarter of {counted(epochs, 'epoch')}, at least {MIN_PATIENCE}"
    # The wait is checked before each epoch, and the first epoch is always the best so far,
    # so a run stops early only when patience <= epochs - 2.
    if patience > epochs - 2:
        reason += "; too few epochs to stop early"
    log_choice("train.early_stop_patience", patience, reason)
    return patience
