"""What a sweep searches: the sweep file's settings and search space, read and checked.

A sweep file (configs/sweep.yaml) names the study, the metric and its direction, the number of
trials, the pruner and the sampler's seed, and maps config keys to ranges under `space:`.
Every problem is one ConfigError naming the entry, raised before the first trial trains.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf

from .cli import DEFAULT_CONFIG
from .config import ConfigError, _load_yaml, load_config

METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")
PRUNERS = ("median", "none")
PARAM_TYPES = ("float", "int", "categorical")
# Settings that sweep.py itself sets for every trial.
RESERVED_KEYS = ("run.dir", "run.resume")


@dataclass
class Param:
    """One dimension of the search space, as Optuna's suggest_* methods take it."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.type == "int":
            step = int(self.step or 1)
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        """The values whose validity stands for the whole range."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


@dataclass
class Sweep:
    """The settings of a sweep file (see configs/sweep.yaml)."""

    name: str
    metric: str = "val_acc"
    direction: str = "maximize"
    trials: int = 20
    pruner: str = "median"
    pruner_startup_trials: int = 3
    pruner_warmup_epochs: int = 1
    seed: int = 0
    space: list[Param] = field(default_factory=list)


def load_sweep(path: Path) -> Sweep:
    """Read and check a sweep file; every problem is one ConfigError naming the entry."""
    raw = OmegaConf.to_container(_load_yaml(path))
    known = set(Sweep.__dataclass_fields__)
    for key in raw:
        if key not in known:
            raise ConfigError(f"{path}: unknown entry {key!r}; entries: {', '.join(sorted(known))}")
    if raw.get("name") is None:
        raise ConfigError(f"{path} has no name: give the study one, e.g. name: shapes-lr")
    if not isinstance(raw["name"], str) or not re.fullmatch(r"[\w.-]+", raw["name"]):
        raise ConfigError(
            f"{path}: name={raw['name']!r} is not allowed; name the study with letters, "
            "digits, '_', '-' and '.', e.g. name: shapes-lr"
        )
    sweep = Sweep(**{key: value for key, value in raw.items() if key != "space"})
    choices = {"metric": METRICS, "direction": ("maximize", "minimize"), "pruner": PRUNERS}
    for key, allowed in choices.items():
        if getattr(sweep, key) not in allowed:
            raise ConfigError(
                f"{path}: {key}={getattr(sweep, key)!r} is not allowed; "
                f"choose one of: {', '.join(allowed)}"
            )
    lowest = {"trials": 1, "pruner_startup_trials": 0, "pruner_warmup_epochs": 0, "seed": 0}
    for key, low in lowest.items():
        value = getattr(sweep, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(
                f"{path}: {key}={value!r} is not allowed; give a whole number >= {low}"
            )
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            f"{path}: 'space' must map config keys to ranges, e.g. "
            "optim.lr: {type: float, low: 1.0e-4, high: 0.1, log: true}"
        )
    sweep.space = [_parse_param(path, key, spec) for key, spec in space.items()]
    return sweep


def _parse_param(path: Path, key: str, spec: Any) -> Param:
    where = f"{path}: space.{key}"
    if key in RESERVED_KEYS:
        raise ConfigError(
            f"{where}: {key} is set by sweep.py for each trial and cannot be searched"
        )
    if not isinstance(spec, dict) or spec.get("type") not in PARAM_TYPES:
        raise ConfigError(
            f"{where} needs a type, one of: {', '.join(PARAM_TYPES)}, e.g. "
            "{type: float, low: 1.0e-4, high: 0.1, log: true}"
        )
    allowed = {"categorical": {"type", "choices"}}.get(
        spec["type"], {"type", "low", "high", "log", "step"}
    )
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown entry {unknown[0]!r} for type {spec['type']}; "
            f"entries: {', '.join(sorted(allowed))}"
        )
    param = Param(key=key, **spec)
    if param.type == "categorical":
        if not isinstance(param.choices, list) or not param.choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, e.g. choices: [32, 64]")
        return param
    numbers = (param.low, param.high) + ((param.step,) if param.step is not None else ())
    if not all(_is_number(number) for number in numbers):
        raise ConfigError(f"{where}: low, high and step must be numbers")
    if not isinstance(param.log, bool):
        raise ConfigError(f"{where}: log={param.log!r} must be true or false")
    if param.low > param.high:
        raise ConfigError(f"{where}: low={param.low} is above high={param.high}")
    if param.log and (param.low <= 0 or param.step is not None):
        raise ConfigError(f"{where}: log: true needs low > 0 and no step")
    if param.step is not None and param.step <= 0:
        raise ConfigError(f"{where}: step={param.step} must be > 0")
    if param.type == "int" and not all(float(n).is_integer() for n in numbers):
        raise ConfigError(f"{where}: an int range needs whole numbers for low, high and step")
    return param


def check_space(sweep: Sweep, train_files: list[Path], overrides: list[str]) -> None:
    """Load the training config with each end of every range: an unknown key, a wrong type
    or a value out of a setting's range fails here, before the first trial."""
    files = [DEFAULT_CONFIG, *train_files]
    load_config(files, overrides)
    for param in sweep.space:
        for value in param.extremes():
            try:
                load_config(files, [*overrides, as_override(param.key, value)])
            except ConfigError as error:
                raise ConfigError(f"search space of {param.key}: {error}") from None


def as_override(key: str, value: Any) -> str:
    """`key=value` as the command line writes it (JSON for lists and booleans)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return f"{key}={text}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
