"""Hyperparameter sweeps with Optuna: a search space in YAML, one ordinary run per trial.

    python sweep.py [SWEEP.yaml] [CONFIG.yaml ...] [key=value ...] --trials N [--dir FOLDER]

The study lives in `<folder>/study.db` (SQLite; the folder defaults to `runs/sweeps/<name>`,
and is owned as a run folder is: see take_sweep_folder).
`--trials N` is the number of finished trials the study should reach, so the same command
run again after a kill continues where the sweep stopped, and a larger N adds trials. Each
trial trains in `<folder>/trial-NNNN/` exactly like `python train.py run.dir=...` would, and
reports its validation metric after every epoch so that the pruner can stop a trial that
lags behind the others; a stopped trial keeps what it saved. The sweep ends with a table of
the best trials (also `best_trials.csv`) and Optuna's plots as PNG files. The sweep file
itself is read and checked by sweep_space.py.

Optuna is imported here only: train.py never pays for it.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from .cli import DEFAULT_CONFIG
from .config import ConfigError, _load_yaml, load_config
from .errors import exit_code_of
from .features import feature_module
from .files import atomic_path
from .runs import write_marker
from .stopping import GracefulStop
from .sweep_space import RESERVED_KEYS, Sweep, as_override, check_space, load_sweep

DEFAULT_SWEEP = DEFAULT_CONFIG.parent / "sweep.yaml"
# The file that makes a folder a sweep folder of this project (see take_sweep_folder).
SWEEP_MARKER = "sweep-folder.json"
# Projects with DDP have sweep_torchrun.py: with --nproc-per-node N it trains each trial as a
# torchrun job of N processes, and adds that option to the command line. Elsewhere it is
# absent, and every trial trains in the sweep's own process.
TORCHRUN = feature_module("sweep_torchrun")
# Options with a value, and what the value is.
OPTIONS = {
    "--trials": "N",
    "--dir": "FOLDER",
    "--seed": "S",
    **(TORCHRUN.OPTIONS if TORCHRUN else {}),
}
USAGE = """\
usage: python sweep.py [SWEEP.yaml] [CONFIG.yaml ...] [key=value ...]
                       {options}

Runs an Optuna study over the search space of SWEEP.yaml (the YAML file with a `space:`
section; default configs/sweep.yaml). Every trial trains with configs/default.yaml, then each
CONFIG.yaml, then the key=value overrides, then the trial's sampled values.
  --trials N    finished trials the study should reach (default: `trials` in SWEEP.yaml);
                the same command again continues a stopped sweep
  --dir FOLDER  folder of the study (default: runs/sweeps/<name>)
  --seed S      seed of the sampler (default: `seed` in SWEEP.yaml); give each of several
                sweep processes that share one study its own
{more_options}"""
# A trial that was still running when its process died is marked failed once its heartbeat
# is this old, so that another sweep on the same study may still be running its own trials.
HEARTBEAT_INTERVAL_S = 30
HEARTBEAT_GRACE_S = 90

# Trains one trial: (train_files, overrides, run_dir, report) -> the exit code of the run.
# `report` gets each epoch's metrics row and returns True to stop (prune) the trial.
TrialRunner = Callable[[list[Path], list[str], Path, Callable[[dict], bool]], int]


def train_in_process(
    train_files: list[Path], overrides: list[str], run_dir: Path, report: Callable[[dict], bool]
) -> int:
    """Train one trial in this process; `report` gets every epoch's metrics row.

    `run_dir` is the trial's folder, which the overrides already set as run.dir.
    """
    from .train import Hooks, run

    try:
        cfg = load_config([DEFAULT_CONFIG, *train_files], overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return run(cfg, Hooks(after_epoch=report))


@dataclass
class Arguments:
    sweep_file: Path
    train_files: list[Path]
    overrides: list[str]
    trials: int | None
    folder: Path | None
    seed: int | None
    # How each trial trains (see trial_runner).
    train_trial: TrialRunner = train_in_process


def usage() -> str:
    """The help text, with the options of this project (sweep_torchrun.py adds one)."""
    return USAGE.format(
        options=" ".join(f"[{option} {value}]" for option, value in OPTIONS.items()),
        more_options=TORCHRUN.USAGE_LINES if TORCHRUN else "",
    )


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
        train_trial=trial_runner(options),
    )


def _whole_number(option: str, value: str, low: int = 1) -> int:
    if not value.isdigit() or int(value) < low:
        raise ConfigError(f"{option} {value}: give a whole number of at least {low}")
    return int(value)


def trial_runner(options: dict[str, str]) -> TrialRunner:
    """How each trial trains: in this process, or as one torchrun job of N processes where
    this project has sweep_torchrun.py and --nproc-per-node N asks for more than one."""
    if TORCHRUN is None:
        return train_in_process
    processes = _whole_number(TORCHRUN.OPTION, options.get(TORCHRUN.OPTION, "1"))
    return TORCHRUN.TorchrunTrial(processes) if processes > 1 else train_in_process


def take_sweep_folder(folder: Path) -> None:
    """Make `folder` (--dir) this project's sweep folder, or raise ConfigError naming it.
    Like a run folder: a sweep writes only into a folder that is new, empty, holds
    SWEEP_MARKER, or is a sweep folder from before the marker (its study.db a regular
    file), and never through a symbolic link in it (SQLite would write the study into the
    link's target, a trial its run): this project makes none there."""
    if folder.is_dir():
        with os.scandir(folder) as entries:
            links = sorted(entry.name for entry in entries if entry.is_symlink())
        if links:
            raise ConfigError(
                f"{folder / links[0]} is a symbolic link, and a sweep never writes through "
                "one; remove it, or give --dir another folder"
            )
        owned = any(_is_regular_file(folder / name) for name in (SWEEP_MARKER, "study.db"))
        if not owned and any(folder.iterdir()):
            raise ConfigError(
                f"{folder} is not a sweep folder of this project (it has no {SWEEP_MARKER}) "
                "and not empty: a sweep writes only into a new or empty folder or its own; "
                "give --dir another folder (or leave it out)"
            )
    elif os.path.lexists(folder):
        raise ConfigError(f"--dir {folder} is not a folder; give a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    if not _is_regular_file(folder / SWEEP_MARKER):
        write_marker(folder / SWEEP_MARKER, "sweep folder", "sweep.py")


def _is_regular_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


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
        code = self.arguments.train_trial(self.arguments.train_files, overrides, run_dir, report)
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
    # Ctrl-C or SIGTERM between trials ends the sweep after the trial; during one, the
    # trial's own handler takes over (see stopping.GracefulStop) and the trial stops too.
    signals = GracefulStop()
    try:
        study.optimize(
            objective,
            n_trials=target - done,
            # Another sweep process may share the study: stop once the study as a whole is done.
            callbacks=[
                optuna.study.MaxTrialsCallback(target, states=FINISHED),
                lambda study, trial: study.stop() if signals.received is not None else None,
            ],
        )
    finally:
        signals.restore()
    if objective.exit_code == 0 and signals.received is not None:
        return study, 128 + signals.received
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
    # Written whole and renamed into place (files.atomic_path): a link there is replaced,
    # never written through.
    with atomic_path(table) as temporary, temporary.open("w", newline="", encoding="utf-8") as file:
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
        with atomic_path(folder / name) as temporary:
            figure.savefig(temporary, format="png", dpi=100)
        plt.close(figure)
        written.append(folder / name)
    return written


def main(argv: list[str]) -> int:
    """The sweep command; returns the exit code: 2 for a bad setting, 1 for another input or
    environment error (see errors.py), 130 when interrupted."""
    if "-h" in argv or "--help" in argv:
        print(usage())
        return 0
    return exit_code_of(sweep_command, argv, fix="point --dir at a writable folder")


def sweep_command(argv: list[str]) -> int:
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(
                "sweep.py starts its trials itself and cannot run under torchrun; "
                + (TORCHRUN.UNDER_TORCHRUN_HINT if TORCHRUN else "start it with python sweep.py")
            )
        arguments = parse_arguments(argv)
        sweep = load_sweep(arguments.sweep_file)
        if arguments.seed is not None:
            sweep.seed = arguments.seed
        check_space(sweep, arguments.train_files, arguments.overrides)
        folder = arguments.folder or Path("runs") / "sweeps" / sweep.name
        take_sweep_folder(folder)
        study, exit_code = run_sweep(sweep, arguments, folder, arguments.trials or sweep.trials)
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
