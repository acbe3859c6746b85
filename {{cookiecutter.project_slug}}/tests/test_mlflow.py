"""tracker=mlflow: the metrics of metrics.csv in one MLflow run, across kills and resumes;
the config, plots and best checkpoint as artefacts; a store that cannot be reached costs a
warning, not the run."""

import math
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, SMALL_OVERRIDES, TIMING_COLUMNS, _read_metrics, _subprocess_env
from mlflow.tracking import MlflowClient

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.hooks import Hooks
from {{ cookiecutter.package_name }}.train import main

# Left out of the quick subset (pytest -m "not slow"): every test here trains, kills and resumes
# runs in processes against a store.
pytestmark = pytest.mark.slow

DRIVER = PROJECT_ROOT / "tests" / "kill_driver.py"
# Three epochs of 8 steps; every step file kept, so a test can resume from an older one.
EPOCHS = ("train.epochs=3", "run.keep_last=10")


def train(run_dir: Path, *overrides: str, kill: str = "none", env: dict | None = None):
    """One training run of `run_dir` (killing itself at `kill`, see tests/kill_driver.py)."""
    return subprocess.run(
        [sys.executable, str(DRIVER), "once", kill, *SMALL_OVERRIDES, f"run.dir={run_dir}"]
        + list(overrides),
        cwd=PROJECT_ROOT,
        env={**_subprocess_env(), "CUDA_VISIBLE_DEVICES": "", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def store(tmp_path, monkeypatch) -> MlflowClient:
    """The default store of runs under tmp_path/runs (no MLFLOW_* setting of the caller's)."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")


def only_run(client: MlflowClient):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [run.info.run_name for run in runs]
    return runs[0]


def assert_metrics_equal_metrics_csv(client: MlflowClient, run_id: str, run_dir: Path) -> None:
    """Every number of every metrics.csv row, once, at its step (the CSV keeps 6 digits).

    A row that reached MLflow before a kill is not logged again when the resumed run
    repeats its epoch: there, only the timings may differ from the repeated row.
    """
    rows = _read_metrics(run_dir)
    steps = [int(row["step"]) for row in rows]
    for column in rows[0]:
        if column == "step" or rows[0][column] == "":  # empty: a run without EMA
            continue
        history = client.get_metric_history(run_id, column)
        assert [metric.step for metric in history] == steps, column
        for metric, row in zip(history, rows, strict=True):
            if column not in TIMING_COLUMNS:
                expected = float(row[column])
                assert math.isclose(metric.value, expected, rel_tol=1e-5), (column, row)


def test_a_run_logs_metrics_params_and_artefacts_and_a_resume_no_step_twice(tmp_path, store):
    run_dir = tmp_path / "runs" / "first"
    result = train(run_dir, *EPOCHS)
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(store)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert_metrics_equal_metrics_csv(store, run.info.run_id, run_dir)
    assert run.data.params["train.epochs"] == "3"
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")["trackers"]
    assert saved == {"mlflow_log": {"run_id": run.info.run_id}}
    artefacts = {item.path for item in store.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "loss.png", "accuracy.png", "checkpoints"} <= artefacts
    best = {item.path for item in store.list_artifacts(run.info.run_id, "checkpoints")}
    assert "checkpoints/best.pt" in best  # with best.safetensors where weights are beside
    assert (tmp_path / "runs" / "mlartifacts").is_dir()  # beside the store, not in the cwd

    # Resumed from the end of epoch 1, the run repeats epochs 2 and 3, whose rows MLflow has.
    older = run_dir / "checkpoints" / "step-00000008.pt"
    result = train(run_dir, *EPOCHS, f"run.resume={older}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert only_run(store).info.run_id == run.info.run_id
    assert_metrics_equal_metrics_csv(store, run.info.run_id, run_dir)


def test_sigkill_between_tracker_and_checkpoint_then_resume_keeps_one_run(tmp_path, store):
    run_dir = tmp_path / "runs" / "killed"
    # Epoch 1's row reaches MLflow, then the run dies before the folder has any checkpoint:
    # the next start begins afresh, in the same MLflow run.
    killed = train(run_dir, *EPOCHS, kill="save_before:8")
    assert killed.returncode == -9, killed.stderr[-3000:]
    # Epoch 2's row reaches MLflow, then the run dies before that epoch's checkpoint.
    killed = train(run_dir, *EPOCHS, "run.resume=auto", kill="save_before:16")
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = train(run_dir, *EPOCHS, "run.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = only_run(store)
    assert_metrics_equal_metrics_csv(store, run.info.run_id, run_dir)  # steps 8 and 16 once
    assert len(_read_metrics(run_dir)) == 3


def test_an_unreachable_server_costs_one_warning_not_the_run(tmp_path):
    run_dir = tmp_path / "runs" / "unreachable"
    nobody = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    result = train(run_dir, env=nobody)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stdout.splitlines() if "tracker mlflow failed" in line]
    assert len(warnings) == 1, result.stdout[-3000:]
    assert "its server cannot be reached" in warnings[0]
    assert not library_lines(result.stdout + result.stderr), result.stderr[-3000:]
    assert len(_read_metrics(run_dir)) == 1


def library_lines(output: str) -> list[str]:
    """The lines that are neither the project's log nor its one-line messages: a tracker
    library's own tracebacks and log spam."""
    ours = re.compile(r"^(\d\d:\d\d:\d\d (INFO|WARNING|ERROR) |warning: |error: )")
    return [line for line in output.splitlines() if line.strip() and not ours.match(line)]


def test_a_read_only_store_costs_one_warning_saying_so(tmp_path, store):
    run_dir = tmp_path / "runs" / "first"
    assert train(run_dir).returncode == 0  # makes the store
    database = tmp_path / "runs" / "mlflow.db"
    read_only = {"MLFLOW_TRACKING_URI": f"sqlite:///file:{database}?mode=ro&uri=true"}
    result = train(tmp_path / "runs" / "second", env=read_only)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stdout.splitlines() if "tracker mlflow" in line]
    assert len(warnings) == 1 and "its store is read-only" in warnings[0], result.stdout[-3000:]
    assert not library_lines(result.stdout + result.stderr), result.stderr[-3000:]
    assert len(_read_metrics(tmp_path / "runs" / "second")) == 1


def test_a_store_locked_during_training_costs_one_warning_and_the_run_ends_failed(
    make_config, tmp_path, store, capfd
):
    """Another process holds the SQLite store (BEGIN EXCLUSIVE) from the first epoch's end to
    the second's: the second epoch's metrics cannot be written, training goes on, and once
    the store is free again the MLflow run is marked FAILED."""
    database = tmp_path / "runs" / "mlflow.db"
    holder = sqlite3.connect(database, isolation_level=None, timeout=60)

    def after_epoch(row: dict) -> bool:
        if row["epoch"] == 0:
            holder.execute("BEGIN EXCLUSIVE")
        else:
            holder.execute("ROLLBACK")
        return False

    cfg = make_config("train.epochs=2", f"run.dir={tmp_path / 'runs' / 'locked'}")
    assert main(cfg, Hooks(after_epoch=after_epoch)) == 0
    holder.close()
    output = "".join(capfd.readouterr())
    warnings = [line for line in output.splitlines() if "tracker mlflow" in line]
    assert len(warnings) == 1, output[-3000:]
    assert "failed to write (its store is locked by another process)" in warnings[0]
    assert "database is locked" in warnings[0]
    assert not library_lines(output), output[-3000:]
    run = only_run(store)
    assert run.info.status == "FAILED"
    assert [m.step for m in store.get_metric_history(run.info.run_id, "epoch")] == [8]
