"""The learning-rate range test, `python train.py --find-lr`: the rule on made-up curves,
the files it writes, the command it prints, and that it changes no other run."""

import csv
import dataclasses
import hashlib
import math
import os
import random
import shlex
import signal
from pathlib import Path

import pytest
from PIL import Image

from {{ cookiecutter.package_name }}.cli import parse_command_line
from {{ cookiecutter.package_name }}.hooks import Hooks
from {{ cookiecutter.package_name }}.lr_curve import (
    CSV_COLUMNS,
    END_LR,
    START_LR,
    STEPS,
    Curve,
    Suggestion,
    suggest,
    sweep_rates,
)
from {{ cookiecutter.package_name }}.lr_find import (
    LR_FIND_MARKER,
    build_like_training,
    follow_rates,
    outcome,
    run_lr_find,
)
from {{ cookiecutter.package_name }}.train import run

TINY = ("data.train_size=64", "data.val_size=16", "data.batch_size=16", "model.width=4")


def swept(loss_at, seed: int = 0, noise: float = 0.0) -> Curve:
    """The curve the sweep records for a loss that depends on the rate as `loss_at` says
    (times 1 + `noise` * a standard normal draw), stopped by the sweep's own rule."""
    draws = random.Random(seed)
    curve = Curve()
    for lr in sweep_rates(START_LR, END_LR, STEPS):
        curve.add(lr, loss_at(lr) * (1 + noise * draws.gauss(0, 1)))
        if curve.diverged:
            break
    return curve


def valley(lr: float) -> float:
    """Flat at 2.3 below 1e-4, falling to 0.5 around 1e-2, blowing up past 0.3."""
    fall = 1.8 / (1 + (1e-3 / lr) ** 2)
    return 2.3 - fall + (lr / 0.3) ** 3


def suggestion_of(curve: Curve) -> Suggestion:
    return suggest(curve.lrs, curve.losses, curve.smoothed)


@pytest.mark.parametrize("seed", range(5))
def test_a_clear_valley_gives_a_tenth_of_the_smoothed_minimums_rate(seed):
    curve = swept(valley, seed, noise=0.02)
    suggestion = suggestion_of(curve)

    best = min(range(len(curve.smoothed)), key=curve.smoothed.__getitem__)
    assert suggestion.lr == float(f"{curve.lrs[best] / 10:.2g}")
    assert START_LR <= suggestion.lr <= END_LR
    assert 1e-3 < suggestion.lr < 0.1  # on the falling slope, before the blow-up
    assert len(curve.lrs) < STEPS  # stopped once the smoothed loss passed 4x its minimum


@pytest.mark.parametrize("seed", range(20))
def test_a_flat_noisy_curve_gives_no_suggestion(seed):
    curve = swept(lambda lr: 2.3, seed, noise=0.05)
    suggestion = suggestion_of(curve)
    assert suggestion.lr is None and "flat or noisy" in suggestion.reason


def test_a_curve_that_diverges_at_once_gives_no_suggestion():
    losses = iter([2.3 * 1.6**step for step in range(STEPS)])
    curve = swept(lambda lr: next(losses))
    assert 2 <= len(curve.lrs) < 10
    assert suggestion_of(curve).lr is None

    nan_at_once = Curve()
    nan_at_once.add(START_LR, 2.3)
    nan_at_once.add(START_LR * 2, math.nan)
    assert nan_at_once.diverged and suggestion_of(nan_at_once).lr is None


def test_a_minimum_within_the_first_decade_gives_no_suggestion():
    # Falls in the first steps, then only rises: a tenth of the minimum's rate lies
    # below the sweep.
    falling = [2.3 - 0.2 * step for step in range(7)]
    losses = [2.3, 2.3, 2.3, *falling, *(1.1 * 1.15**step for step in range(1, 40))]
    lrs = sweep_rates(START_LR, END_LR, STEPS)[: len(losses)]
    curve = Curve()
    for lr, loss in zip(lrs, losses, strict=True):
        curve.add(lr, loss)
    suggestion = suggestion_of(curve)
    assert suggestion.lr is None and "within a decade" in suggestion.reason


@pytest.mark.parametrize("freeze_epochs", [0, 1])
def test_each_group_follows_the_sweep_at_its_ratio_and_a_frozen_backbone_stays_still(
    freeze_epochs, make_config, tmp_path
):
    tuning = (f"train.freeze_epochs={freeze_epochs}", "optim.backbone_lr_ratio=0.5")
    cfg = make_config(*TINY, "train.epochs=2", *tuning)
    cfg, trainer, _ = build_like_training(cfg, tmp_path / "unused")
    lrs = sweep_rates(START_LR, END_LR, 10)
    follow_rates(trainer, cfg.optim.lr, lrs)

    ratio = {"classifier": 1.0, "backbone": 0.0 if freeze_epochs else 0.5}
    for step in range(len(lrs)):
        for group in trainer.optimizer.param_groups:
            assert group["lr"] == pytest.approx(lrs[step] * ratio[group["part"]], rel=1e-9)
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert not (tmp_path / "unused").exists()


def test_the_printed_command_repeats_the_arguments_with_the_suggested_rate(tmp_path):
    extra = tmp_path / "my settings.yaml"
    extra.write_text("train:\n  epochs: 3\n", encoding="utf-8")
    argv = ["--find-lr", str(extra), "optim.lr=0.5", "data.batch_size=64", "run.dir=runs/x"]
    cfg, _ = parse_command_line(argv)
    lines = outcome(cfg, argv, Curve(), Suggestion(0.0032, "a tenth of 0.032"))

    command = lines[-1].split(": ", 1)[1]
    assert shlex.split(command) == [
        "python",
        "train.py",
        str(extra),
        "data.batch_size=64",
        "optim.lr=0.0032",
    ]
    # A side the sweep chose goes on the line: training then uses the side it measured.
    chosen = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=48))
    command = outcome(chosen, argv, Curve(), Suggestion(0.0032, "a tenth"))[-1]
    assert shlex.split(command.split(": ", 1)[1])[-1] == "data.image_size=48"
    # No clear minimum: the automatic rate, where a given one is left out.
    lines = outcome(cfg, argv, Curve(), Suggestion(None, "flat"))
    assert lines[0] == "no suggestion: flat"
    assert shlex.split(lines[-1].split(": ", 1)[1])[2:] == [str(extra), "data.batch_size=64"]


def fingerprint(folder: Path) -> dict[str, str]:
    """Every entry below `folder`: a file's SHA-256 and change time, a link's target."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            entries[str(path)] = f"-> {os.readlink(path)}"
        elif path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            entries[str(path)] = f"{digest} {path.stat().st_mtime_ns}"
    return entries


def find_lr(small_overrides, *overrides: str, steps: int = 20, hooks=None) -> int:
    argv = [*small_overrides, *TINY, *overrides, "--find-lr"]
    cfg, _ = parse_command_line(argv)
    return run_lr_find(cfg, argv, steps=steps, hooks=hooks)


def read_rows(folder: Path) -> list[dict]:
    with (folder / "lr_find.csv").open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_the_sweep_writes_its_own_folder_and_changes_no_other_run(
    make_config, small_overrides, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert run(make_config(*TINY, "train.max_steps=2", "run.dir=null")) == 0
    (training,) = [path for path in Path("runs").iterdir() if not path.is_symlink()]
    before = fingerprint(Path("runs"))
    capsys.readouterr()

    assert find_lr(small_overrides, "optim.lr=0.003", "run.name=mine") == 0

    (folder,) = Path("runs").glob("mine-lr-find-*")
    assert fingerprint(Path("runs")) == {**before, **fingerprint(folder)}
    assert os.readlink("runs/latest") == training.name
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        ["lr_find.csv", "lr_find.png", "config.yaml", LR_FIND_MARKER]
    )
    rows = read_rows(folder)
    assert tuple(rows[0]) == CSV_COLUMNS and 2 <= len(rows) <= 20
    assert [int(row["step"]) for row in rows] == list(range(1, len(rows) + 1))
    lrs = [float(row["lr"]) for row in rows]
    assert lrs == sorted(lrs) and len(set(lrs)) == len(lrs) and lrs[0] == START_LR
    with Image.open(folder / "lr_find.png") as image:
        assert image.format == "PNG" and "smoothed loss" in image.info["Description"]
    assert "optim:\n  name: adamw\n  lr: 0.003" in (folder / "config.yaml").read_text()

    out = capsys.readouterr().out
    command = shlex.split(out.strip().splitlines()[-1].split(": ", 1)[1])
    assert command[:2] == ["python", "train.py"] and "run.name=mine" in command
    assert "--find-lr" not in command and "data.batch_size=16" in command
    if "suggested learning rate: optim.lr=" in out:
        (rate,) = [float(item[9:]) for item in command if item.startswith("optim.lr=")]
        assert lrs[0] <= rate <= lrs[-1]
    else:
        assert "no suggestion: " in out and not any(i.startswith("optim.lr") for i in command)

    # Again into the same folder (its own): the files are replaced, nothing else changes.
    assert find_lr(small_overrides, f"run.dir={folder}", steps=5) == 0
    assert len(read_rows(folder)) <= 5
    assert sorted(Path("runs").iterdir()) == sorted([training, folder, Path("runs/latest")])


def test_ctrl_c_during_the_sweep_writes_the_steps_so_far(small_overrides, tmp_path, capsys):
    def interrupt(state) -> None:
        if state.global_step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    folder = tmp_path / "found"
    code = find_lr(small_overrides, f"run.dir={folder}", hooks=Hooks(after_step=interrupt))

    assert code == 128 + signal.SIGINT
    assert len(read_rows(folder)) == 7 and (folder / "lr_find.png").is_file()
    assert "stopped by SIGINT after 7 steps of 20" in capsys.readouterr().out


def test_a_loss_that_is_nan_at_once_still_gives_the_files_and_says_why_no_rate(
    small_overrides, tmp_path, capsys
):
    folder = tmp_path / "found"
    # Inputs scaled by 1e37 overflow the first layers: the very first loss is NaN.
    huge = ("data.mean=[0.5,0.5,0.5]", "data.std=[1e-37,1e-37,1e-37]")
    assert find_lr(small_overrides, *huge, f"run.dir={folder}") == 0

    (row,) = read_rows(folder)
    assert row["loss"] == "nan" and (folder / "lr_find.png").is_file()
    out = capsys.readouterr().out
    assert "no suggestion: the loss diverged at once" in out


def test_under_torchrun_it_asks_for_one_process(small_overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert find_lr(small_overrides, f"run.dir={tmp_path / 'found'}") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--find-lr runs in one process" in line and "train.grad_accum_steps=N" in line
    assert not (tmp_path / "found").exists()


@pytest.mark.parametrize(
    "given, expected",
    [
        ("run.resume=auto", "--find-lr starts from the settings, not from a run"),
        ("run.dir=RUN", "is a training run's folder"),
        ("run.dir=USERS", "is not a folder of --find-lr"),
    ],
)
def test_what_it_may_not_start_from_or_write_is_one_line_exit_2(
    given, expected, make_config, small_overrides, tmp_path, capsys
):
    assert run(make_config(*TINY, "train.max_steps=1")) == 0
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "notes.txt").write_text("mine\n", encoding="utf-8")
    before = fingerprint(tmp_path)
    capsys.readouterr()
    given = given.replace("RUN", str(tmp_path / "run")).replace("USERS", str(tmp_path / "users"))

    assert find_lr(small_overrides, f"run.dir={tmp_path / 'new'}", given) == 2

    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and expected in line
    assert fingerprint(tmp_path) == before and not (tmp_path / "new").exists()


@pytest.mark.slow
def test_train_py_find_lr_anywhere_among_the_arguments(run_python, small_overrides, tmp_path):
    folder = tmp_path / "sweep"
    args = [*small_overrides[:3], "--find-lr", *small_overrides[3:], *TINY, f"run.dir={folder}"]
    result = run_python("train.py", *args)

    assert result.returncode == 0, result.stderr[-2000:]
    assert len(read_rows(folder)) >= 2
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("train with ") and "--find-lr" not in last
    assert f"run.dir={folder}" not in last  # the sweep's folder is no training run's
