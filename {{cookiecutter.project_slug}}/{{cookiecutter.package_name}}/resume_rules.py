"""What a resumed run may change, and the three ways to go on from a run.

A resumed run continues as it began: its own saved config is the base, and the settings
given at resume apply on top only where they leave the training trajectory unchanged
(FREE_TO_CHANGE: which device and workers, when to stop or save, ...). Any other change is
refused with one line that names each changed key and the ways forward:

- continue unchanged: leave those settings out (a run that has not finished);
- run.fork=true: a new run (new folder, optimizer, schedule; epoch 1) that starts from the
  checkpoint's weights, with the settings given now; its model.weights names the parent;
- run.extend=true with a larger train.epochs, once the run has finished: the extra epochs
  train in the same folder, the optimizer's state kept, on a schedule of their own that
  runs as sched.* describes from optim.lr (warm-up included), like a warm restart.

The settings "given at resume" are those on the command line (its YAML files and
key=value overrides); a program that calls train.main with a whole Config gives them all.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .config import Config, ConfigError, load_saved_config, to_dict
from .engine import TrainState
from .log import counted
from .recipe import AUTOMATIC, FROM_THE_WEIGHTS
from .renamed_settings import current_name
from .runs import run_dir_of
from .yaml_files import flatten

logger = logging.getLogger(__name__.rsplit(".", 1)[0])

# Where the files are, how fast, on what, and when to stop or save: a resumed run may
# change these and still train the very same steps (a moved data.root is checked by the
# data's fingerprint instead).
FREE_TO_CHANGE = frozenset(
    {
        "data.root",
        "data.download",
        "data.num_workers",
        "data.cache",
        "data.cache_dir",
        "train.max_steps",
        "train.device",
        "train.threads",
        "train.compile",
        "train.channels_last",
        "train.log_every",
        "train.ddp_timeout_s",
        "train.find_unused_parameters",
        "run.name",
        "run.keep_last",
        "run.save_every_steps",
    }
)
# Which run, and how to go on from it: always those given now, never the saved ones.
HOW_TO_GO_ON = frozenset(
    {"run.dir", "run.resume", "run.fork", "run.extend", "run.allow_changed_data"}
)
EXTENSION_KEYS = frozenset({"train.epochs", "train.early_stop_patience"})


@dataclass(frozen=True)
class Plan:
    """How this run goes on from the checkpoint it was pointed at."""

    cfg: Config  # the config it trains with
    mode: str  # "continue", "extend", "fork" or "finished" (nothing left to do)
    schedule_start_epoch: int  # where the learning-rate schedule in use began


def settings_given(config_files: list[str | Path], overrides: list[str]) -> set[str]:
    """The dotted keys that YAML files and `key=value` overrides set, by today's names (a key
    the template renamed counts as the new one: loading the config already warned of it)."""
    given = set()
    for path in config_files:
        given |= set(flatten(OmegaConf.to_container(OmegaConf.load(path)) or {}))
    for override in overrides:
        given.add(override.partition("=")[0].strip().lstrip("+~"))
    return {current_name(key) for key in given}


def check_how_to_go_on(cfg: Config) -> None:
    """run.fork and run.extend are ways to go on from a run: they need one, and exclude
    each other."""
    if (cfg.run.fork or cfg.run.extend) and not cfg.run.resume:
        chosen = "run.fork" if cfg.run.fork else "run.extend"
        raise ConfigError(
            f"{chosen}=true needs the run to go on from: add run.resume=RUN_FOLDER "
            "(or a checkpoint)"
        )
    if cfg.run.fork and cfg.run.extend:
        raise ConfigError(
            "run.fork=true and run.extend=true exclude each other: fork starts a new run "
            "from the weights, extend trains the same run longer; choose one"
        )


def plan_continuation(
    cfg: Config, given: set[str] | None, checkpoint_path: Path, checkpoint: dict
) -> Plan:
    """The config and the way this run goes on from `checkpoint` (see the module
    docstring); raises ConfigError naming each change that the chosen way does not allow."""
    saved = checkpoint["config"]
    merged, before = _apply_given(saved, cfg, given), load_saved_config(saved, [])
    changes = _changes(before, merged)
    blocked = {key: change for key, change in changes.items() if key not in FREE_TO_CHANGE}
    state = TrainState(**checkpoint["progress"])
    run = run_dir_of(checkpoint_path)
    start = state.schedule_start_epoch
    if cfg.run.fork:
        parent = checkpoint_path.resolve()
        # A fresh run, whose model.weights names the checkpoint it starts from (its
        # weights, pretrained or not: the published ones are not read again).
        forked = _with(
            merged,
            {
                "model.weights": str(parent),
                "model.pretrained": False,
                "run.fork": False,
                "run.resume": None,
            },
        )
        logger.info(
            "run.fork: a new run from the weights of %s (step %d)", parent, state.global_step
        )
        return Plan(forked, "fork", 0)
    finished = _finished(state, before)
    if cfg.run.extend:
        _check_extension(run, state, finished, blocked, saved)
        return Plan(merged, "extend", state.epoch)
    if blocked:
        raise ConfigError(_refusal(run, blocked, finished, state.epoch))
    if finished is not None:
        logger.info(
            "%s has finished (%s); nothing to do. To train longer: python train.py "
            "run.resume=%s run.extend=true train.epochs=%d",
            run,
            finished,
            run,
            2 * merged.train.epochs,
        )
        return Plan(merged, "finished", start)
    return Plan(merged, "continue", start)


def _apply_given(saved: dict, cfg: Config, given: set[str] | None) -> Config:
    """The saved config with the given settings of `cfg` on top (an automatic setting
    given as null keeps the choice the run made)."""
    merged = flatten(saved)  # a new dict: `saved` stays as it is
    for key, value in flatten(to_dict(cfg)).items():
        if key in HOW_TO_GO_ON or given is None or key in given:
            if not (value is None and key in (*AUTOMATIC, *FROM_THE_WEIGHTS)):
                merged[key] = value
    return load_saved_config(_unflatten(merged), [])


def _unflatten(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        *sections, name = key.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return tree


def _with(cfg: Config, settings: dict[str, Any]) -> Config:
    flat = flatten(to_dict(cfg))
    flat.update(settings)
    return load_saved_config(_unflatten(flat), [])


def _changes(before: Config, after: Config) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} for each setting that differs, run locations left out."""
    old, new = flatten(to_dict(before)), flatten(to_dict(after))
    return {
        key: (old.get(key), value)
        for key, value in new.items()
        if key not in HOW_TO_GO_ON and old.get(key) != value
    }


def _finished(state: TrainState, saved: Config) -> str | None:
    """How the run ended, when it has: all its epochs, or early stopping."""
    if state.epoch >= saved.train.epochs:
        return f"{state.epoch} of {saved.train.epochs} epochs trained"
    patience = saved.train.early_stop_patience or 0
    if 0 < patience <= state.epochs_since_best:
        return (
            f"stopped early after epoch {state.epoch}: no better validation accuracy "
            f"for {counted(state.epochs_since_best, 'epoch')}"
        )
    return None


def _check_extension(
    run: Path, state: TrainState, finished: str | None, blocked: dict, saved: dict
) -> None:
    if finished is None:
        raise ConfigError(
            f"run.extend=true: {run} has not finished (epoch {state.epoch + 1} of "
            f"{saved['train']['epochs']}); continue it first with python train.py "
            f"run.resume={run}, then extend it"
        )
    others = {key: change for key, change in blocked.items() if key not in EXTENSION_KEYS}
    if others:
        raise ConfigError(
            f"run.extend=true trains the same run longer, so only train.epochs and "
            f"train.early_stop_patience may change, not {_listed(others)}; to change "
            "them, start a new run from its weights with run.fork=true instead"
        )
    epochs = blocked.get("train.epochs", (None, saved["train"]["epochs"]))[1]
    if epochs <= state.epoch:
        raise ConfigError(
            f"run.extend=true needs a train.epochs larger than the {counted(state.epoch, 'epoch')} "
            f"{run} has trained, e.g. train.epochs={2 * state.epoch}"
        )
    first = state.epoch + 1
    extra = f"epoch {epochs}" if epochs == first else f"epochs {first} to {epochs}"
    logger.info("run.extend: %s of %s, on a schedule of their own", extra, run)


def _listed(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in sorted(changes.items()))


def _refusal(run: Path, blocked: dict, finished: str | None, trained: int) -> str:
    """The one line that refuses a change, with the ways forward. A finished run has
    nothing left to continue: only run.extend (more epochs) or run.fork goes on from it."""
    fork = "add run.fork=true to start a new run from its weights with these settings"
    if finished is None:
        return (
            f"resuming {run} with other settings would change how it trains: "
            f"{_listed(blocked)}. Either leave them out to continue it unchanged (python "
            f"train.py run.resume={run}); or {fork}"
        )
    epochs = blocked.get("train.epochs")
    longer = set(blocked) <= EXTENSION_KEYS and epochs is not None and epochs[1] > trained
    extend = "add run.extend=true to train the extra epochs on a schedule of their own"
    return (
        f"{run} has finished ({finished}) and these settings would change how it trained: "
        f"{_listed(blocked)}. To go on from it, {f'{extend}; or ' if longer else ''}{fork}"
    )
