"""sweep.py: a study in SQLite that a killed or repeated sweep continues, pruning, bad input."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import PROJECT_ROOT

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.sweep import (
    Objective,
    load_sweep,
    main,
    parse_arguments,
)

SWEEP_FILE = """\
name: test-sweep
metric: val_acc
direction: maximize
trials: 3
pruner: median
pruner_startup_trials: 3
pruner_warmup_epochs: 1
seed: 0
space:
  optim.lr: {type: float, low: 1.0e-3, high: 0.1, log: true}
  optim.weight_decay: {type: float, low: 0.0, high: 0.1}
  data.batch_size: {type: categorical, choices: [16, 32]}
"""
# Two epochs of 2 to 4 steps per trial.
TINY = ("data.train_size=64", "data.val_size=32", "train.epochs=2")


def write_sweep(folder: Path, text: str = SWEEP_FILE) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load_study(folder: Path) -> optuna.Study:
    storage = f"sqlite:///{folder / 'study.db'}"
    return optuna.load_study(study_name="test-sweep", storage=storage)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(states=states)


@pytest.mark.slow
def test_sweep_writes_the_study_and_continues_it(
    tmp_path, small_overrides, subprocess_env, run_python, read_metrics
):
    folder = tmp_path / "sweep"
    command = [str(write_sweep(tmp_path)), *small_overrides, *TINY, "--dir", str(folder)]

    # Killed while its second trial trains: the study keeps what was finished.
    with (tmp_path / "killed.log").open("w") as log:
        sweep = subprocess.Popen(
            [sys.executable, "sweep.py", *command, "--trials", "3"],
            cwd=PROJECT_ROOT,
            env=subprocess_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while not (folder / "trial-0001").exists() and sweep.poll() is None:
            assert time.monotonic() < deadline, "the sweep never started its second trial"
            time.sleep(0.02)
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
    done = finished(load_study(folder))
    assert 1 <= len(done) < 3
    before = {trial.number: (trial.params, trial.value) for trial in done}

    result = run_python("sweep.py", *command, "--trials", "3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{len(done)} trials finished, running {3 - len(done)} more" in result.stdout
    study = load_study(folder)
    assert len(finished(study)) == 3
    for trial in finished(study):
        if trial.number in before:
            assert (trial.params, trial.value) == before[trial.number]
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir.parent == folder
        rows = read_metrics(run_dir)
        assert [float(row["val_acc"]) for row in rows] == pytest.approx(
            list(trial.intermediate_values.values()), rel=1e-5
        )
        assert (run_dir / "checkpoints" / "last.pt").is_file()
        assert 0.001 <= trial.params["optim.lr"] <= 0.1
        assert trial.params["data.batch_size"] in (16, 32)

    # A second invocation with a larger target adds to the same study.
    result = run_python("sweep.py", *command, "--trials", "4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "3 trials finished, running 1 more" in result.stdout
    grown = finished(load_study(folder))
    assert len(grown) == 4
    earlier = {trial.number: (trial.params, trial.value) for trial in finished(study)}
    assert {t.number: (t.params, t.value) for t in grown if t.number in earlier} == earlier
    # The continued sweeps drew new values, not those of the first trials again.
    assert len({trial.params["optim.lr"] for trial in grown}) == len(grown)
    best = (folder / "best_trials.csv").read_text(encoding="utf-8").splitlines()
    assert best[0].startswith("trial,state,value,epochs,data.batch_size")
    assert len(best) == 1 + 4
    for name in ("history.png", "intermediate.png", "importance.png"):
        assert (folder / name).stat().st_size > 0, name


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_with_exit_130(tmp_path, small_overrides, subprocess_env):
    folder = tmp_path / "sweep"
    sweep = subprocess.Popen(
        [sys.executable, "sweep.py", str(write_sweep(tmp_path)), *small_overrides, *TINY]
        + ["train.epochs=50", "--dir", str(folder)],
        cwd=PROJECT_ROOT,
        env=subprocess_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (folder / "trial-0000" / "train.log").exists() and sweep.poll() is None:
        assert time.monotonic() < deadline, "the first trial never started"
        time.sleep(0.02)
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, stderr
    assert "the same command continues the study" in stderr
    (trial,) = load_study(folder).trials  # no further trial was started
    assert trial.state == optuna.trial.TrialState.FAIL


def run_a_trial_that_is_pruned(tmp_path: Path, argv: list[str]) -> Path:
    """One trial under a pruner that stops it at its first report; returns its run folder."""
    folder = tmp_path / "sweep"
    arguments = parse_arguments([str(write_sweep(tmp_path)), *argv, "--dir", str(folder)])
    # A validation accuracy never reaches 2.
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0)
    )
    study.optimize(Objective(load_sweep(arguments.sweep_file), arguments, folder), n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]  # nothing reported after the pruning
    return Path(trial.user_attrs["run_dir"])


@pytest.mark.slow
def test_pruned_trial_ends_cleanly_and_keeps_its_run_folder(
    tmp_path, small_overrides, read_metrics
):
    run_dir = run_a_trial_that_is_pruned(tmp_path, [*small_overrides, *TINY])
    assert len(read_metrics(run_dir)) == 1
    progress = load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]
    assert progress["epoch"] == 1  # the end of epoch 1 was saved, then the run stopped


def space_with(entry: str) -> str:
    return SWEEP_FILE.replace("space:\n", f"space:\n  {entry}\n")


BAD_INPUT = {
    "zero trials": ([], ["--trials", "0"], "--trials"),
    "unknown entry": (SWEEP_FILE + "metrc: val_loss\n", [], "'metrc'"),
    "bad metric": (SWEEP_FILE.replace("metric: val_acc", "metric: accuracy"), [], "metric"),
    "bad name": (SWEEP_FILE.replace("name: test-sweep", "name: a/b"), [], "name='a/b'"),
    "no name": (SWEEP_FILE.replace("name: test-sweep\n", ""), [], "has no name: give the"),
    "unknown key": (space_with("optim.lrr: {type: float, low: 0.1, high: 1}"), [], "optim.lrr"),
    "no type": (space_with("optim.momentum: {low: 0.1, high: 0.9}"), [], "needs a type"),
    "log from 0": (space_with("sched.gamma: {type: float, low: 0, high: 1, log: true}"), [], "log"),
    "out of range": (
        space_with("optim.momentum: {type: float, low: 0.5, high: 1}"),
        [],
        "optim.momentum",
    ),
    "wrong type": (
        space_with("model.width: {type: categorical, choices: [8, big]}"),
        [],
        "model.width",
    ),
    "run.dir given": ([], ["run.dir=elsewhere"], "--dir"),
    "missing file": ([], ["missing.yaml"], "missing.yaml"),
    "unknown option": ([], ["--trails", "3"], "--trails"),
    "bad seed": ([], ["--seed", "-1"], "--seed"),
}


def assert_bad_input_is_one_line_and_exit_2(tmp_path, capsys, sweep_text, extra, named):
    """main() refuses the sweep file `sweep_text` (the default one when empty) with the
    arguments `extra`: one error line on stderr that names `named`, exit code 2."""
    sweep_file = write_sweep(tmp_path, sweep_text or SWEEP_FILE)
    never = tmp_path / "never"
    assert main([str(sweep_file), "--dir", str(never), *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], lines
    assert not never.exists()


@pytest.mark.parametrize(("sweep_text", "extra", "named"), BAD_INPUT.values(), ids=BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, sweep_text, extra, named):
    assert_bad_input_is_one_line_and_exit_2(tmp_path, capsys, sweep_text, extra, named)


def test_refuses_to_run_under_torchrun(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([str(write_sweep(tmp_path)), "--dir", str(tmp_path / "never")]) == 2
    assert "torchrun" in capsys.readouterr().err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every entry of `folder` by name, with its bytes (a link: its target)."""
    return {
        path.name: str(path.readlink()).encode() if path.is_symlink() else path.read_bytes()
        for path in sorted(folder.iterdir())
    }


def test_a_folder_that_is_not_a_sweep_folder_is_refused_and_left_as_it_was(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n", encoding="utf-8")
    own = tmp_path / "own"  # someone's own files, named as a sweep's are
    own.mkdir()
    (own / "best_trials.csv").write_text("the user's own table\n", encoding="utf-8")
    (own / "history.png").write_bytes(b"the user's own picture")
    linked = tmp_path / "linked"  # a sweep folder of this project, with links put into it
    linked.mkdir()
    (linked / "sweep-folder.json").write_text("{}\n", encoding="utf-8")
    (linked / "study.db").symlink_to(victim)
    (linked / "best_trials.csv").symlink_to(victim)

    for folder in (own, linked):
        before = snapshot(folder)
        assert main([str(write_sweep(tmp_path)), "--dir", str(folder), "--trials", "1"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(folder) in lines[0]
        assert snapshot(folder) == before
    assert victim.read_text(encoding="utf-8") == "the user's own file\n"


@pytest.mark.slow
def test_a_sweep_folder_from_before_the_marker_is_taken_on_and_its_report_replaced_whole(
    tmp_path, capsys
):
    folder = tmp_path / "sweep"
    folder.mkdir()
    study = optuna.create_study(
        storage=f"sqlite:///{folder / 'study.db'}", study_name="test-sweep", direction="maximize"
    )
    study.optimize(lambda trial: trial.suggest_float("optim.lr", 1e-3, 0.1), n_trials=2)
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n", encoding="utf-8")
    for name in ("best_trials.csv", "history.png"):  # the same file under a second name
        (folder / name).hardlink_to(victim)

    assert main([str(write_sweep(tmp_path)), "--dir", str(folder), "--trials", "2"]) == 0

    assert victim.read_text(encoding="utf-8") == "the user's own file\n"
    assert (folder / "best_trials.csv").read_text(encoding="utf-8").startswith("trial,state")
    assert (folder / "history.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((folder / "sweep-folder.json").read_text())["kind"] == "sweep folder"
