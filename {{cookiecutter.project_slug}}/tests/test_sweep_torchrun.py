"""sweep.py with DDP: each trial as one torchrun job of N processes (--nproc-per-node N)."""

from test_sweep import (
    assert_bad_input_is_one_line_and_exit_2,
    run_a_trial_that_is_pruned,
    write_sweep,
)

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.sweep import main, parse_arguments, train_in_process
from {{ cookiecutter.package_name }}.sweep_torchrun import TorchrunTrial


def test_trial_as_a_torchrun_job_is_pruned_by_sigterm(tmp_path, small_overrides, read_metrics):
    # Many short epochs: the pruning after the first one comes long before the last.
    longer = ("data.train_size=128", "data.val_size=32", "train.epochs=50")
    argv = [*small_overrides, *longer, "--nproc-per-node", "2"]
    run_dir = run_a_trial_that_is_pruned(tmp_path, argv)
    assert 1 <= len(read_metrics(run_dir)) < 50
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "world size 2" in log and "stopped by SIGTERM" in log
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["epoch"] >= 1


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
