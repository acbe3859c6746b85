"""Hyperparameter sweeps with Optuna: a search space in YAML, one ordinary run per trial.

    python sweep.py [SWEEP.yaml] [CONFIG.yaml ...] [key=value ...] --trials N [--dir FOLDER]

The study lives in `<folder>/study.db` (SQLite; the folder defaults to `runs/sweeps/<name>`).
`--trials N` is the number of finished trials the study should reach, so the same command
run again after a kill continues where the sweep stopped, and a larger N adds trials. Each
trial trains in `<folder>/trial-NNNN/` exactly like `python train.py run.dir=...` would, and
reports its validation metric after every epoch so that the pruner can stop a trial that
lags behind the others; a stopped trial keeps what it saved. The sweep ends with a table of
the best trials (also `best_trials.csv`) and Optuna's plots as PNG files.

Optuna is imported here only: train.py never pays for it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
{% if cookiecutter.use_ddp %}
import signal
import subprocess
{% endif %}
import sys
{% if cookiecutter.use_ddp %}
import time
{% endif %}
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf

from .cli import DEFAULT_CONFIG
from .config import ConfigError, _load_yaml, load_config
{% if cookiecutter.use_ddp %}
from .log import read_csv
{% endif %}

DEFAULT_SWEEP = DEFAULT_CONFIG.parent / "sweep.yaml"
{% if cookiecutter.use_ddp %}
TRAIN_SCRIPT = DEFAULT_CONFIG.parent.parent / "train.py"
{% endif %}
USAGE = """\
usage: python sweep.py [SWEEP.yaml] [CONFIG.yaml ...] [key=value ...]
{% if cookiecutter.use_ddp %}
                       [--trials N] [--dir FOLDER] [--seed S] [--nproc-per-node N]
{% else %}
                       [--trials N] [--dir FOLDER] [--seed S]
{% endif %}

Runs an Optuna study over the search space of SWEEP.yaml (the YAML file with a `space:`
section; default configs/sweep.yaml). Every trial trains with configs/default.yaml, then each
CONFIG.yaml, then the key=value overrides, then the trial's sampled values.
  --trials N    finished trials the study should reach (default: `trials` in SWEEP.yaml);
                the same command again continues a stopped sweep
  --dir FOLDER  folder of the study (default: runs/sweeps/<name>)
  --seed S      seed of the sampler (default: `seed` in SWEEP.yaml); give each of several
                sweep processes that share one study its own
{% if cookiecutter.use_ddp %}
  --nproc-per-node N   run each trial as one torchrun job of N processes (default 1: each
                       trial trains in this process)
{% endif %}
"""
# Options with a value, and what the value is.
{% if cookiecutter.use_ddp %}
OPTIONS = {"--trials": "N", "--dir": "FOLDER", "--seed": "S", "--nproc-per-node": "N"}
{% else %}
OPTIONS = {"--trials": "N", "--dir": "FOLDER", "--seed": "S"}
{% endif %}
METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")
PRUNERS = ("median", "none")
PARAM_TYPES = ("float", "int", "categorical")
# Settings that sweep.py itself sets for every trial.
RESERVED_KEYS = ("run.dir", "run.resume")
# A trial that was still running when its process died is marked failed once its heartbeat
# is this old, so that another sweep on the same study may still be running its own trials.
HEARTBEAT_INTERVAL_S = 30
HEARTBEAT_GRACE_S = 90


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


@dataclass
class Arguments:
    sweep_file: Path
    train_files: list[Path]
    overrides: list[str]
    trials: int | None
    folder: Path | None
    seed: int | None
{% if cookiecutter.use_ddp %}
    processes: int = 1
{% endif %}


def parse_arguments(argv: list[str]) -> Arguments:
    """Split the command line; the YAML file with a `space:` section is the sweep file."""
    yaml_files, overrides, options = [], [], {}
    arguments = iter(argv)
    for argument in arguments:
        if argument in OPTIONS:
            value = next(arguments, None)
            if value is None:
                raise ConfigError(f"{argument} needs a value: {argument} {OPTIONS[argument]}")
            options[argument] = value
        elif argument.startswith("-"):
            known = ", ".join(f"{name} {value}" for name, value in OPTIONS.items())
            raise ConfigError(f"unknown option {argument!r}; options: {known}, --help")
        elif "=" in argument:
            overrides.append(argument)
        elif argument.endswith((".yaml", ".yml")):
            yaml_files.append(Path(argument))
        else:
            raise ConfigError(
                f"argument {argument!r} is neither a .yaml file nor key=value; "
                "write overrides as key=value, e.g. train.epochs=3"
            )
    sweep_files = [path for path in yaml_files if "space" in _load_yaml(path)]
    if len(sweep_files) > 1:
        raise ConfigError(
            f"{sweep_files[0]} and {sweep_files[1]} both have a 'space:' section; "
            "give one sweep file"
        )
    train_files = [path for path in yaml_files if path not in sweep_files]
    for override in overrides:
        key = override.partition("=")[0].removeprefix("+").strip()
        if key in RESERVED_KEYS:
            raise ConfigError(
                f"{key} is set by sweep.py for each trial; choose the folder with --dir"
            )
    return Arguments(
        sweep_file=sweep_files[0] if sweep_files else DEFAULT_SWEEP,
        train_files=train_files,
        overrides=overrides,
        trials=_whole_number("--trials", options["--trials"]) if "--trials" in options else None,
        folder=Path(options["--dir"]) if "--dir" in options else None,
        seed=_whole_number("--seed", options["--seed"], low=0) if "--seed" in options else None,
{% if cookiecutter.use_ddp %}
        processes=_whole_number("--nproc-per-node", options.get("--nproc-per-node", "1")),
{% endif %}
    )


def _whole_number(option: str, value: str, low: int = 1) -> int:
    if not value.isdigit() or int(value) < low:
        raise ConfigError(f"{option} {value}: give a whole number of at least {low}")
    return int(value)


def load_sweep(path: Path) -> Sweep:
    """Read and check a sweep file; every problem is one ConfigError naming the entry."""
    raw = OmegaConf.to_container(_load_yaml(path))
    known = set(Sweep.__dataclass_fields__)
    for key in raw:
        if key not in known:
            raise ConfigError(f"{path}: unknown entry {key!r}; entries: {', '.join(sorted(known))}")
    if not isinstance(raw.get("name"), str) or not re.fullmatch(r"[\w.-]+", raw["name"]):
        raise ConfigError(
            f"{path}: name={raw.get('name')!r} is not allowed; name the study with letters, "
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


def open_study(sweep: Sweep, folder: Path) -> optuna.Study:
    """The study stored in `folder/study.db`: created by the first run, continued after."""
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # Optuna flags heartbeats as experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{(folder / 'study.db').resolve()}",
            heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=HEARTBEAT_GRACE_S,
        )
    if sweep.pruner == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=sweep.pruner_startup_trials,
            n_warmup_steps=sweep.pruner_warmup_epochs,
        )
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        storage=storage,
        study_name=sweep.name,
        direction=sweep.direction,
        pruner=pruner,
        load_if_exists=True,
    )
    stored = study.direction.name.lower()
    if stored != sweep.direction:
        raise ConfigError(
            f"the study {sweep.name!r} in {folder} was made to {stored}, not to "
            f"{sweep.direction}; use another name or --dir"
        )
    # Seeded from the trials so far as well: a continued sweep must not draw the values of
    # its first trials again.
    study.sampler = optuna.samplers.TPESampler(seed=sweep.seed + len(study.trials))
    return study


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


class Objective:
    """What Optuna calls for each trial: sample the values, train, report every epoch."""

    def __init__(self, sweep: Sweep, arguments: Arguments, folder: Path) -> None:
        self.sweep = sweep
        self.arguments = arguments
        self.folder = folder
        # Non-zero once a trial was stopped by Ctrl-C, SIGTERM or a bad setting: the sweep
        # stops with this exit code.
        self.exit_code = 0

    def __call__(self, trial: optuna.Trial) -> float:
        values = {param.key: param.suggest(trial) for param in self.sweep.space}
        run_dir = self.folder / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        sampled = [as_override(key, value) for key, value in values.items()]
        overrides = [*self.arguments.overrides, *sampled, f"run.dir={run_dir}"]
        history: list[float] = []
        pruned = False

        def report(row: dict) -> bool:
            nonlocal pruned
            if pruned:  # a row written while the trial was already stopping
                return True
            value = float(row[self.sweep.metric])
            history.append(value)
            trial.report(value, step=int(row["epoch"]))
            pruned = trial.should_prune()
            return pruned

        print(f"trial {trial.number}: {' '.join(sampled)} -> {run_dir}", flush=True)
{% if cookiecutter.use_ddp %}
        if self.arguments.processes > 1:
            code = train_with_torchrun(
                self.arguments.train_files, overrides, run_dir, report, self.arguments.processes
            )
        else:
            code = train_in_process(self.arguments.train_files, overrides, report)
{% else %}
        code = train_in_process(self.arguments.train_files, overrides, report)
{% endif %}
        if pruned:
            raise optuna.TrialPruned(f"pruned after epoch {len(history)}")
        if code == 0 and not history:
            print(
                f"error: trial {trial.number} finished no epoch, so it has no "
                f"{self.sweep.metric}; remove train.max_steps or raise it",
                file=sys.stderr,
            )
            code = 2
        if code == 0:
            return max(history) if self.sweep.direction == "maximize" else min(history)
        # Exit code 1: this trial failed (e.g. its loss diverged), which says something about
        # its values; the sweep goes on. Anything else (a bad setting, Ctrl-C, SIGTERM) stops it.
        if code != 1:
            self.exit_code = code
            trial.study.stop()
        return math.nan  # Optuna records the trial as failed


def train_in_process(train_files: list[Path], overrides: list[str], report) -> int:
    """Train one trial in this process; `report` gets every epoch's metrics row."""
    from .train import Hooks, run

    try:
        cfg = load_config([DEFAULT_CONFIG, *train_files], overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return run(cfg, Hooks(after_epoch=report))
{% if cookiecutter.use_ddp %}


def train_with_torchrun(
    train_files: list[Path], overrides: list[str], run_dir: Path, report, processes: int
) -> int:
    """Train one trial as one torchrun job of `processes` processes.

    Its metrics.csv is read as it grows, and each new row goes to `report`; when that asks to
    stop, the job gets SIGTERM, on which every rank finishes its step, saves and exits.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        str(TRAIN_SCRIPT),
        *map(str, train_files),
        *overrides,
    ]
    job = subprocess.Popen(command)
    reported, stopping = 0, False
    try:
        while True:
            ended = job.poll() is not None
            rows = read_csv(run_dir / "metrics.csv")
            for row in rows[reported:]:
                if report(row) and not stopping and job.poll() is None:
                    job.send_signal(signal.SIGTERM)
                    stopping = True
            reported = len(rows)
            if ended:
                return job.returncode
            time.sleep(0.5)
    except KeyboardInterrupt:  # Ctrl-C reached the job too: let its ranks save
        job.wait()
        return 130
{% endif %}


def run_sweep(
    sweep: Sweep, arguments: Arguments, folder: Path, target: int
) -> tuple[optuna.Study, int]:
    """Run trials until the study has `target` finished ones; returns it and the exit code."""
    study = open_study(sweep, folder)
    done = len(finished_trials(study))
    if done >= target:
        print(f"the study already has {done} finished trials; ask for more with --trials N")
        return study, 0
    print(f"study {sweep.name!r} in {folder}: {done} trials finished, running {target - done} more")
    objective = Objective(sweep, arguments, folder)
    study.optimize(
        objective,
        n_trials=target - done,
        # Another sweep process may share the study: stop once the study as a whole is done.
        callbacks=[optuna.study.MaxTrialsCallback(target, states=FINISHED)],
    )
    return study, objective.exit_code


def best_trials_table(study: optuna.Study) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the finished trials: completed ones best first, then pruned ones."""
    states = optuna.trial.TrialState
    completed = study.get_trials(deepcopy=False, states=(states.COMPLETE,))
    completed.sort(key=lambda trial: trial.value, reverse=study.direction.name == "MAXIMIZE")
    pruned = study.get_trials(deepcopy=False, states=(states.PRUNED,))
    params = sorted({key for trial in completed + pruned for key in trial.params})
    header = ["trial", "state", "value", "epochs", *params, "run_dir"]
    rows = []
    for trial in completed + pruned:
        epochs = len(trial.intermediate_values)
        value = "" if trial.value is None else f"{trial.value:.4f}"
        rows.append(
            [str(trial.number), trial.state.name.lower(), value, str(epochs)]
            + [_short(trial.params.get(key, "")) for key in params]
            + [trial.user_attrs.get("run_dir", "")]
        )
    return header, rows


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_report(study: optuna.Study, folder: Path) -> list[Path]:
    """Print the best trials; write best_trials.csv and the plots. Returns the files."""
    header, rows = best_trials_table(study)
    table = folder / "best_trials.csv"
    with table.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows[:5], strict=False)]
    print("best trials:")
    for line in [header, *rows[:5]]:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=False))
        print("  " + "  ".join(cells).rstrip())
    return [table, *write_plots(study, folder)]


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's matplotlib plots as PNG files; a plot that needs more trials is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    plots = {
        "history.png": optuna_plots.plot_optimization_history,
        "intermediate.png": optuna_plots.plot_intermediate_values,
        "importance.png": optuna_plots.plot_param_importances,
    }
    written = []
    completed = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
    for name, plot in plots.items():
        if name == "importance.png" and len(completed) < 2:
            print(f"{name}: skipped, parameter importance needs 2 completed trials")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as error:
                print(f"{name}: skipped ({error})")
                continue
        figure = axes.ravel()[0].figure if hasattr(axes, "ravel") else axes.figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figure.savefig(folder / name, dpi=100)
        plt.close(figure)
        written.append(folder / name)
    return written


def main(argv: list[str]) -> int:
    """The sweep command; returns the exit code (2 for a bad setting, 130 when interrupted)."""
    if "-h" in argv or "--help" in argv:
        print(USAGE)
        return 0
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(
                "sweep.py starts its trials itself and cannot run under torchrun; "
{% if cookiecutter.use_ddp %}
                "for trials of N processes each, run python sweep.py --nproc-per-node N"
{% else %}
                "start it with python sweep.py"
{% endif %}
            )
        arguments = parse_arguments(argv)
        sweep = load_sweep(arguments.sweep_file)
        if arguments.seed is not None:
            sweep.seed = arguments.seed
        check_space(sweep, arguments.train_files, arguments.overrides)
        folder = arguments.folder or Path("runs") / "sweeps" / sweep.name
        study, exit_code = run_sweep(sweep, arguments, folder, arguments.trials or sweep.trials)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        exit_code = 130
    if exit_code != 0:
        print(
            f"sweep stopped (exit code {exit_code}); the same command continues the study",
            file=sys.stderr,
        )
        return exit_code
    files = write_report(study, folder)
    print(f"study: {folder / 'study.db'}; wrote {', '.join(path.name for path in files)}")
    return 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
