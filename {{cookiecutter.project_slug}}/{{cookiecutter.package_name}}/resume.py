"""Resuming a run: which checkpoint to go on from and how (see resume_rules), whether the
data is still what it was, and taking back the training state.

The checkpoint is the truth: a resumed run trains with its settings and normalisation
statistics. The run folder's config.yaml and normalization.json are records of them, written
at each start; where one differs from the checkpoint (edited, or left by another run) or
cannot be read, one warning says which values are used and how to change them.
"""

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointManager, load_checkpoint, load_model_state
from .class_names import class_difference
from .config import Config, ConfigError, to_dict
from .data import STATS_FILE, DataBundle, build_datasets, save_stats
from .data.fingerprint import fingerprint
from .data.stats import checked_stats, read_stats_record, same_stats
from .ema import WeightAverage
from .engine import Trainer, TrainState
from .manifest import check_resume
from .resume_rules import FREE_TO_CHANGE, HOW_TO_GO_ON, Plan, plan_continuation
from .runs import CHECKPOINTS, RUNS, RunFolder, newest_run, run_dir_of
from .yaml_files import YamlError, flatten, read_mapping, spelling

logger = logging.getLogger(__name__.rsplit(".", 1)[0])


def find_resume(cfg: Config, checkpoints: CheckpointManager) -> tuple[Path, dict] | None:
    """The checkpoint to go on from, loaded and verified; None for a fresh start.

    `checkpoints` are those of this run's folder. run.resume names a checkpoint, a run
    folder (its newest valid checkpoint) or `auto` (the newest valid one of this run's
    folder, if any yet); with run.fork it is another run's, and this folder a new one.
    """
    resume = cfg.run.resume
    if resume is None or cfg.run.fork:
        if checkpoints.latest() is not None:
            raise ConfigError(
                f"run.dir={checkpoints.folder.parent} already holds checkpoints of a run; "
                f"continue it with run.resume={checkpoints.folder.parent}, or choose another "
                "run.dir"
            )
    if resume is None:
        return None
    if resume == "auto" and not cfg.run.fork:
        return checkpoints.load_newest_valid()  # skips broken files with a warning
    source = newest_run() if resume == "auto" else Path(resume)
    if source is None:
        raise ConfigError(f"run.resume=auto: no run in {RUNS} to start from")
    if not source.is_dir():
        return source, load_checkpoint(source)
    folder = run_dir_of(source) / CHECKPOINTS
    found = CheckpointManager(folder, is_main=False).load_newest_valid()
    if found is None:
        raise ConfigError(
            f"run.resume={resume}: {run_dir_of(source)} holds no checkpoint yet; "
            "give a run folder that has one, or leave run.resume out for a fresh run"
        )
    return found


def restore(trainer: Trainer, resume: tuple[Path, dict], extend: bool = False) -> TrainState:
    """Load the model, optimizer, scheduler and grad scaler of the checkpoint into `trainer`;
    returns where training stood. (Random streams: see processes.SingleProcess.restore.)

    `extend` (run.extend): the run trains extra epochs on a schedule of their own, so the
    scheduler stays as built, at its start, and the optimizer takes its learning rate.
    """
    path, checkpoint = resume
    load_model_state(trainer.model, checkpoint["model"], path)
    schedule_start = [group["lr"] for group in trainer.optimizer.param_groups]
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    state = TrainState(**checkpoint["progress"])
    if extend:
        for group, lr in zip(trainer.optimizer.param_groups, schedule_start, strict=True):
            group["lr"] = lr
        state.schedule_start_epoch = state.epoch
    else:
        trainer.scheduler.load_state_dict(checkpoint["scheduler"])
    # A run that trained without a grad scaler (on a CPU, in bf16 or float32) saved an empty
    # state; resumed in fp16 (on a GPU, say), its scaler starts from the initial scale.
    if checkpoint["scaler"]:
        trainer.precision.scaler.load_state_dict(checkpoint["scaler"])
    if trainer.ema is not None and "ema" in checkpoint:
        trainer.ema.load_state_dict(checkpoint["ema"])
    elif trainer.ema is not None:  # a checkpoint without one: the average starts here
        trainer.ema = WeightAverage(trainer.model, trainer.ema.decay)
    logger.info(
        "resumed from %s: epoch %d, batch %d, step %d",
        path,
        state.epoch + 1,
        state.batch_in_epoch,
        state.global_step,
    )
    return state


def plan_run(
    cfg: Config, given: set[str] | None, team, run: RunFolder
) -> tuple[Plan, tuple | None]:
    """How this run goes on: fresh, or from which checkpoint and in which way (see
    resume_rules); the checkpoint is None for a fresh run or a fork (its weights come in
    through model.weights)."""
    resume = team.find_resume(cfg, CheckpointManager(run.checkpoints, is_main=False))
    if resume is None:
        if cfg.run.resume == "auto":
            logger.info("run.resume=auto: no checkpoint in %s yet, starting fresh", run.path)
        return Plan(cfg, "fresh", 0), None
    plan = plan_continuation(cfg, given, *resume)
    if plan.mode == "fork":
        return plan, None
    if team.is_main:
        check_config_record(run, plan.cfg, resume[0], given)
    return plan, resume


# A config.yaml is a few kilobytes: anything far larger is not one.
MAX_CONFIG_BYTES = 1024 * 1024
# How many differing settings one warning names.
LISTED = 6


def check_config_record(
    run: RunFolder, cfg: Config, checkpoint: Path, given: set[str] | None
) -> None:
    """One warning where the run's config.yaml differs from `cfg`, the settings this resumed
    run trains with (its checkpoint's, and those given now), or cannot be read: it is a
    record, never read back as settings. Which run and how to go on (run.*) and the
    settings given now are left out: they are meant to differ."""
    path = run.config
    try:
        if not path.is_file():
            return
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise YamlError(f"{path.stat().st_size} bytes, far too large for settings")
        recorded = flatten(read_mapping(path)[0])
    except (OSError, YamlError) as error:
        logger.warning(
            "%s cannot be read (%s); it is only a record: this run trains with the settings of "
            "its checkpoint %s and writes the file again",
            path,
            " ".join(str(error).split()),
            checkpoint,
        )
        return
    used = flatten(to_dict(cfg))
    skipped = HOW_TO_GO_ON | (given or set())
    differences = {
        key: value
        for key, value in recorded.items()
        if key not in skipped and (key not in used or not _same_value(value, used[key]))
    }
    if differences:
        logger.warning("%s", _config_difference(run, checkpoint, differences, used))


def _same_value(recorded: Any, used: Any) -> bool:
    """Whether a value read from YAML is the setting's value (true is not 1, [1] is (1,))."""
    if isinstance(recorded, (list, tuple)) and isinstance(used, (list, tuple)):
        pairs = zip(recorded, used, strict=False)
        return len(recorded) == len(used) and all(_same_value(a, b) for a, b in pairs)
    if isinstance(recorded, bool) or isinstance(used, bool):
        return type(recorded) is type(used)
    return recorded == used


def _config_difference(run: RunFolder, checkpoint: Path, differences: dict, used: dict) -> str:
    """The warning for an edited config.yaml: what differs, what is used, and the command
    that trains with the file's values (a new run where one changes how it trains)."""
    named = "; ".join(
        f"{key}: {spelling(value)} in the file, "
        + (f"{spelling(used[key])} used" if key in used else "not a setting")
        for key, value in list(differences.items())[:LISTED]
    )
    more = f" (and {len(differences) - LISTED} more)" if len(differences) > LISTED else ""
    settings = {key: value for key, value in differences.items() if key in used}
    overrides = " ".join(f"{key}={spelling(value, limit=200)}" for key, value in settings.items())
    if not settings:
        how = "nothing to give: they are not settings, and the file is written without them"
    elif set(settings) <= FREE_TO_CHANGE:
        how = f"python train.py run.resume={run.path} {overrides}"
    else:
        how = (
            f"a new run from these weights, as they change how it trains: python train.py "
            f"run.resume={run.path} run.fork=true {overrides}"
        )
    return (
        f"{run.config} differs from the settings of the checkpoint this run continues, "
        f"{checkpoint}: {named}{more}. The checkpoint's settings are used (config.yaml is a "
        f"record, written again at each start); to train with the file's values: {how}"
    )


def build_data(
    cfg: Config, run: RunFolder, resume: tuple | None, team, choose_size=None, weights=None
) -> DataBundle:
    """build_datasets for this run. A fresh run computes its statistics itself (a
    normalization.json already in the folder is not read: it may be another run's); a resumed
    run normalises with its checkpoint's, and its main process checks the folder's record of
    them, writing it again where it differs. `choose_size`: see data/survey.py (a resumed
    run has its side from its checkpoint)."""
    if resume is None:
        return build_datasets(
            cfg.data, cfg.seed, agree=team.agree, choose_size=choose_size, weights=weights
        )
    path, checkpoint = resume
    record = run.path / STATS_FILE
    try:
        stats = checked_stats(checkpoint.get("normalization"))
    except ValueError as error:  # a checkpoint without usable statistics: the record serves
        logger.warning("%s holds no usable normalisation statistics (%s)", path, error)
        return build_datasets(cfg.data, cfg.seed, record, agree=team.agree)
    given = cfg.data.mean is not None
    data_cfg = dataclasses.replace(cfg.data, mean=list(stats[0]), std=list(stats[1]))
    data = build_datasets(data_cfg, cfg.seed, agree=team.agree)
    if data.stats_source != "config" or given:
        return data  # the built-in shapes, or statistics the settings give
    data.stats_source = "checkpoint"
    logger.info("normalisation: mean %s, std %s, from %s", *_rounded(stats), path)
    if team.is_main:
        recorded, problem = read_stats_record(record)
        if recorded is None or not same_stats(recorded, stats):
            if record.exists():
                logger.warning("%s", _stats_difference(run, record, path, recorded, problem))
            save_stats(record, data)
    return data


def _rounded(stats: tuple[tuple, tuple]) -> list[list[float]]:
    return [[round(value, 4) for value in values] for values in stats]


def _stats_difference(run: RunFolder, record: Path, checkpoint: Path, recorded, problem) -> str:
    if recorded is None:
        found = f"cannot be read ({problem})"
    else:
        found = "holds mean {}, std {}, other statistics than the checkpoint's".format(
            *_rounded(recorded)
        )
    return (
        f"{record} {found}; this run normalises with those of its checkpoint {checkpoint}, "
        "and writes them into the file again (it is a record). To train with other "
        f"statistics, start a new run from these weights: python train.py "
        f"run.resume={run.path} run.fork=true data.mean=[...] data.std=[...] (or null to "
        "compute them from the data)"
    )


def check_data(
    run: RunFolder, cfg: Config, data: DataBundle, resume: tuple | None, device: torch.device
) -> dict:
    """The data's fingerprint (for manifest.json). A resumed run must find the classes it
    began with, in the same order, and the same files unless run.allow_changed_data; another
    torch, CUDA or device only costs a warning (see manifest.py)."""
    data_fingerprint = fingerprint(cfg)
    if resume is None:
        return data_fingerprint
    difference = class_difference(resume[1]["classes"], data.classes)
    if difference is not None:
        raise ConfigError(
            f"the classes of the data differ from those {resume[0]} was trained on: "
            f"{difference}. Resume with the data it was trained on, or train a new run"
        )
    check_resume(run.path, data_fingerprint, device, cfg.run.allow_changed_data)
    return data_fingerprint
