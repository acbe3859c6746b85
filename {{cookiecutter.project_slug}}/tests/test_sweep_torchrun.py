"""sweep.py with DDP: each trial as one torchrun job of N processes (--nproc-per-node N)."""

import signal
import subprocess
import sys
import time

import optuna
import pytest
from conftest import PROJECT_ROOT
from test_sweep import (
    TINY,
    assert_bad_input_is_one_line_and_exit_2,
    load_study,
    run_a_trial_that_is_pruned,
    write_sweep,
)

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.sweep import main, parse_arguments, train_in_process
from {{ cookiecutter.package_name }}.sweep_torchrun import TorchrunTrial


@pytest.mark.slow
def test_trial_as_a_torchrun_job_is_pruned_by_sigterm(tmp_path, small_overrides, read_metrics):
    # Many short epochs: the pruning after the first one comes long before the last.
    longer = ("data.train_size=128", "data.val_size=32", "train.epochs=50")
    argv = [*small_overrides, *longer, "--nproc-per-node", "2"]
    run_dir = run_a_trial_that_is_pruned(tmp_path, argv)
    assert 1 <= len(read_metrics(run_dir)) < 50
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "world size 2" in log and "stopped by SIGTERM" in log
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["epoch"] >= 1


@pytest.mark.slow
def test_ctrl_c_sent_to_the_sweep_alone_stops_its_torchrun_trial(
    tmp_path, small_overrides, subprocess_env
):
    """`kill -INT` of the sweep's process (not of its whole group, as a terminal's Ctrl-C
    would): the sweep passes the request on to the running job, whose ranks save and exit."""
    folder = tmp_path / "sweep"
    sweep = subprocess.Popen(
        [sys.executable, "sweep.py", str(write_sweep(tmp_path)), *small_overrides, *TINY]
        + ["train.epochs=50", "--nproc-per-node", "2", "--dir", str(folder)],
        cwd=PROJECT_ROOT,
        env=subprocess_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = folder / "trial-0000"
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.csv").exists() and sweep.poll() is None:
        assert time.monotonic() < deadline, "the first trial never finished an epoch"
        time.sleep(0.05)
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, stderr[-3000:]
    assert "the same command continues the study" in stderr
    (trial,) = load_study(folder).trials  # no further trial was started
    assert trial.state == optuna.trial.TrialState.FAIL
    assert "stopped by SIGINT" in (run_dir / "train.log").read_text(encoding="utf-8")
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["global_step"] > 0


def test_nproc_per_node_chooses_how_each_trial_trains(tmp_path):
    sweep_file = str(write_sweep(tmp_path))
    assert parse_arguments([sweep_file]).train_trial is train_in_process
    assert parse_arguments([sweep_file, "--nproc-per-node", "1"]).train_trial is train_in_process
    assert parse_arguments([sweep_file, "--nproc-per-node", "3"]).train_trial == TorchrunTrial(3)


def test_no_processes_is_one_line_and_exit_2(tmp_path, capsys):
    extra = ["--nproc-per-node", "0"]
    assert_bad_input_is_one_line_and_exit_2(tmp_path, capsys, "", extra, "--nproc-per-node")


def test_help_and_the_advice_under_torchrun_name_the_option(tmp_path, capsys, monkeypatch):
    assert main(["--help"]) == 0
    assert "[--nproc-per-node N]" in capsys.readouterr().out
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([str(write_sweep(tmp_path)), "--dir", str(tmp_path / "never")]) == 2
    assert "run python sweep.py --nproc-per-node N" in capsys.readouterr().err
