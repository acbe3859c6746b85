"""The learning-rate range test: `python train.py --find-lr [CONFIG.yaml ...] [key=value ...]`.

It builds the data, the model and the optimizer exactly as training with the same settings
would (the same functions of train.py, the same automatic choices, logged), then trains for
a short sweep in which the learning rate rises exponentially each step, and reads off a rate
to train with (the curve and the rule: lr_curve.py). It prints the suggestion and the command
that trains with it, and writes into a folder of its own:

    runs/<run.name>-lr-find-<timestamp>/      (run.dir names another, new or empty, folder)
        lr-find-folder.json       marks the folder as this tool's (it may write it again)
        lr_find.csv               step, lr, loss, smoothed_loss
        lr_find.png               the loss against the rate, the suggestion marked
        config.yaml               the resolved settings it swept with

The files appear together or not at all (files.staged_files). It writes no checkpoint,
never runs/latest, and no training run's folder: a training run never writes into its
folder either (it is not a run folder: runs.check_run_folder). The sweep runs in one
process; Ctrl-C or SIGTERM stops it after the step in progress, and what it has is written.
"""

import contextlib
import logging
import math
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from torch.optim.lr_scheduler import LambdaLR

from .cli import DEFAULT_CONFIG, split_arguments
from .config import Config, ConfigError, get_setting, load_config, to_yaml
from .engine import NonFiniteLossError, Trainer, TrainState, train_one_epoch
from .errors import INTERRUPTED, describe, print_lines, report
from .files import staged_files
from .hooks import Hooks
from .input_size import build_run_data
from .log import counted, draws_progress_bar, progress_bar, setup_logging
from .lr_curve import (
    END_LR,
    START_LR,
    STEPS,
    Curve,
    Suggestion,
    draw,
    suggest,
    sweep_rates,
    write_csv,
)
from .model import check_model_name
from .processes import SingleProcess
from .recipe import choose_data_settings, choose_machine_settings
from .resume_rules import check_how_to_go_on
from .runs import RUN_MARKER, RunFolder, is_run_folder, new_run_dir, write_marker
from .seeding import seed_everything
from .stopping import GracefulStop, exit_code_unless_stopped
from .train import (
    Loaders,
    build_loaders,
    build_trainer,
    build_training_model,
    prepare_device,
)
from .yaml_files import spelling

logger = logging.getLogger(__name__.rsplit(".", 1)[0])

LR_FIND_MARKER = "lr-find-folder.json"
FILES = ("lr_find.csv", "lr_find.png", "config.yaml", LR_FIND_MARKER)
FIX = "point run.dir at a writable folder"


def run_lr_find(
    cfg: Config, argv: list[str], steps: int = STEPS, hooks: Hooks | None = None
) -> int:
    """The range test with `cfg`, parsed from the command line `argv` (of train.py, which
    the printed command repeats); returns the exit code. Every input or environment error
    is one line (errors.py); a second Ctrl-C exits 130 at once, with nothing written.
    `steps`: the sweep's length (fewer in the tests); `hooks.after_step` is called after
    each of its steps."""
    try:
        return find_lr(cfg, argv, steps, hooks or Hooks())
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return INTERRUPTED
    except Exception as error:
        failure = describe(error, FIX)
        if failure is None:
            raise  # a bug: its traceback shows where
        return report(failure)


def find_lr(cfg: Config, argv: list[str], steps: int, hooks: Hooks) -> int:
    check_one_process()
    if cfg.run.resume is not None:
        raise ConfigError(
            f"--find-lr starts from the settings, not from a run: leave out "
            f"run.resume={cfg.run.resume} (to sweep a run's settings, give its config.yaml)"
        )
    check_how_to_go_on(cfg)
    folder = Path(cfg.run.dir) if cfg.run.dir else new_run_dir(f"{cfg.run.name}-lr-find")
    check_lr_find_folder(folder)
    # Ctrl-C and SIGTERM are requests to stop from the first moment on, as in training.
    signals = GracefulStop()
    try:
        setup_logging()  # held in memory: the sweep keeps no log file, the console has it
        logger.info("lr-find folder: %s", folder)
        cfg, trainer, loaders = build_like_training(cfg, folder)
        lrs = sweep_rates(START_LR, END_LR, steps)
        curve = sweep(trainer, loaders, cfg, lrs, signals, hooks)
    finally:
        signals.restore()
    if not curve.lrs:  # a signal before the first step: there is nothing to write
        name = signal.Signals(signals.received).name
        print(f"stopped by {name} before the sweep's first step: nothing written", file=sys.stderr)
        return 128 + signals.received
    suggestion = suggest(curve.lrs, curve.losses, curve.smoothed)
    code = exit_code_unless_stopped(write_results, folder, cfg, curve, suggestion)
    if code != 0:
        return code  # a signal while writing: one line said what was written
    print_lines(outcome(cfg, argv, curve, suggestion))
    if signals.received is not None:
        name = signal.Signals(signals.received).name
        logger.warning(
            "stopped by %s after %s of %d: %s holds the curve so far",
            name,
            counted(len(curve.lrs), "step"),
            steps,
            folder,
        )
        return 128 + signals.received
    return 0


def check_one_process() -> None:
    """ConfigError under torchrun: the sweep is one process's."""
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise ConfigError(
            "--find-lr runs in one process: start it with python train.py --find-lr, without "
            "torchrun; add train.grad_accum_steps=N to sweep the batches of N processes "
            "(data.batch_size is each process's)"
        )


def check_lr_find_folder(folder: Path) -> None:
    """ConfigError unless `folder` is new, empty, or one this tool made (it holds
    LR_FIND_MARKER, a regular file): never a training run's or sweep's folder, nor a
    folder of someone's own files. Reads the listing only: nothing is changed."""
    if os.path.lexists(folder) and not folder.is_dir():
        raise ConfigError(f"run.dir={folder} is not a folder; give a new or empty folder")
    if not folder.is_dir():
        return
    marker = folder / LR_FIND_MARKER
    if marker.is_file() and not marker.is_symlink():
        return
    if is_run_folder(folder) or (folder / RUN_MARKER).exists():
        raise ConfigError(
            f"{folder} is a training run's folder, and --find-lr writes only into a new or "
            "empty folder or its own; leave run.dir out (a folder runs/<run.name>-lr-find-"
            "<timestamp> is made) or give another one"
        )
    if any(folder.iterdir()):
        raise ConfigError(
            f"{folder} is not a folder of --find-lr (it has no {LR_FIND_MARKER}) and not "
            "empty: --find-lr writes only into a new or empty folder or its own; leave run.dir "
            "out or give another one"
        )


def build_like_training(cfg: Config, folder: Path) -> tuple[Config, Trainer, Loaders]:
    """The settings with their automatic choices made, the trainer and the loaders, built
    by the very steps of train.py's main() for a fresh run (kept in step with it)."""
    team = SingleProcess()
    check_model_name(cfg.model.name)  # a typo fails here, before any data is made
    cfg = choose_machine_settings(cfg)
    device = prepare_device(cfg.train, team)
    seed_everything(cfg.seed)
    cfg, data = build_run_data(cfg, RunFolder(folder), None, team, device)
    cfg = choose_data_settings(cfg, data, team.world_size)
    loaders = build_loaders(data, cfg, team, device)
    model = build_training_model(cfg, data, device, team, resumed=False)
    trainer = build_trainer(cfg, model, device, loaders.batches_per_epoch)
    return cfg, trainer, loaders


def sweep(
    trainer: Trainer,
    loaders: Loaders,
    cfg: Config,
    lrs: list[float],
    signals: GracefulStop,
    hooks: Hooks,
) -> Curve:
    """Train one optimizer step at each of `lrs` (as optim.lr: every parameter group keeps
    its ratio to it), through train.py's own loop; stop early where the curve diverges or a
    signal came. Returns the curve of the steps trained."""
    follow_rates(trainer, cfg.optim.lr, lrs)
    steps_per_epoch = math.ceil(loaders.batches_per_epoch / cfg.train.grad_accum_steps)
    logger.info(
        "lr-find: %s, the learning rate rising exponentially from %g to %g; stops early once "
        "the smoothed loss is 4x its minimum",
        counted(len(lrs), "step"),
        lrs[0],
        lrs[-1],
    )
    if steps_per_epoch < len(lrs):
        logger.info(
            "lr-find: the training set gives %s an epoch, so the sweep goes through it %d "
            "times, reusing its batches (as training's epochs do)",
            counted(steps_per_epoch, "step"),
            math.ceil(len(lrs) / steps_per_epoch),
        )
    curve, state = Curve(), TrainState()

    def record() -> None:
        state.fold_pending()
        curve.add(lrs[state.global_step - 1], state.loss_sum / max(state.seen, 1))
        state.loss_sum, state.correct, state.seen = 0.0, 0.0, 0  # the next step's alone

    def finished() -> bool:
        return curve.diverged or len(curve.lrs) == len(lrs) or signals.received is not None

    def after_step() -> bool:
        record()
        hooks.after_step(state)
        return finished()

    total = len(lrs) * cfg.train.grad_accum_steps
    progress = progress_bar(total, 0, "lr-find", enabled=draws_progress_bar(0))
    while not finished():
        state.start_epoch(state.epoch + 1 if curve.lrs else 0)
        loaders.batches.set_epoch(state.epoch)
        try:
            batches = loaders.batches_per_epoch
            train_one_epoch(trainer, loaders.train, batches, state, after_step, progress)
        except NonFiniteLossError:
            if len(curve.lrs) < state.global_step:  # its log line found it before after_step
                record()
    progress.close()
    return curve


def follow_rates(trainer: Trainer, base_lr: float, lrs: list[float]) -> None:
    """Point `trainer` at the sweep: its scheduler steps through `lrs` after each optimizer
    step, each parameter group at the ratio to `base_lr` (optim.lr) it was built with; a
    group that training holds still at its start (a pretrained backbone while the classifier
    trains alone: optim.BackboneFollows) stays still. No moving average of the weights,
    which the sweep never reads."""
    last = len(lrs) - 1

    def rising(step: int) -> float:
        return lrs[min(step, last)] / base_lr

    def still(step: int) -> float:
        return 0.0

    factors = []
    for group in trainer.optimizer.param_groups:
        # The rate each group was built with (the schedule may have moved "lr" already).
        group["initial_lr"] = group.get("initial_lr", group["lr"])
        factors.append(still if group["lr"] == 0 else rising)
    trainer.scheduler = LambdaLR(trainer.optimizer, factors)
    trainer.step_scheduler_per_batch = True
    trainer.ema = None


def write_results(folder: Path, cfg: Config, curve: Curve, suggestion: Suggestion) -> int:
    """lr_find.csv, lr_find.png, config.yaml and the marker, moved into `folder` together."""
    with staged_files(folder) as staging:
        write_csv(staging / "lr_find.csv", curve)
        draw(staging / "lr_find.png", curve, suggestion)
        (staging / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
        write_marker(staging / LR_FIND_MARKER, "lr-find folder", "train.py --find-lr")
    logger.info("wrote %s", ", ".join(str(folder / name) for name in FILES[:3]))
    return 0


def outcome(cfg: Config, argv: list[str], curve: Curve, suggestion: Suggestion) -> list[str]:
    """What the sweep found, and the command that trains with it."""
    if suggestion.lr is None:
        command = train_command(argv, {"optim.lr": None, "run.dir": None})
        return [
            f"no suggestion: {suggestion.reason}",
            f"train with the automatic learning rate: {command}",
        ]
    # The side the sweep chose (when left null) goes on the line: a new run would time
    # its own and might train at another side, for which the rate was not measured.
    settings = {"optim.lr": suggestion.lr, "data.image_size": cfg.data.image_size}
    command = train_command(argv, {**settings, "run.dir": None})
    return [
        f"suggested learning rate: optim.lr={suggestion.lr:g} ({suggestion.reason})",
        f"train with it: {command}",
    ]


def train_command(argv: list[str], settings: dict[str, Any]) -> str:
    """`python train.py` with the config files and overrides of `argv` (--find-lr and its
    run.dir left out), then each of `settings` that they do not give already; quoted for
    a POSIX shell."""
    config_files, overrides, _ = split_arguments(argv)
    kept = [item for item in overrides if _override_key(item) not in settings]
    with contextlib.suppress(ConfigError):  # the settings then all go on the line
        given = load_config(config_files, kept)
        settings = {k: v for k, v in settings.items() if get_setting(given, k) != v}
    added = [f"{key}={spelling(value, limit=200)}" for key, value in settings.items()]
    files = [str(path) for path in config_files if path != DEFAULT_CONFIG]
    return " ".join(["python", "train.py", *map(shlex.quote, [*files, *kept, *added])])


def _override_key(override: str) -> str:
    """The setting an override `key=value` names (as config.py reads it: `+key` too)."""
    return override.partition("=")[0].removeprefix("+").strip()
