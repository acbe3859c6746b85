"""tracker=wandb: offline by default, the metrics of metrics.csv in one W&B run across kills
and resumes (read back from the run's transaction logs, which `wandb sync` uploads), the
config, plots and best checkpoint among its files; a server that cannot be reached costs a
warning, not the run."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, SMALL_OVERRIDES, TIMING_COLUMNS, _read_metrics, _subprocess_env

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.wandb_log import transaction_records

# Left out of the quick subset (pytest -m "not slow"): every test here trains, kills and resumes
# runs in processes, then syncs them.
pytestmark = pytest.mark.slow

DRIVER = PROJECT_ROOT / "tests" / "kill_driver.py"
# Three epochs of 8 steps; every step file kept, so a test can resume from an older one.
EPOCHS = ("train.epochs=3", "run.keep_last=10")


@pytest.fixture
def wandb_env(tmp_path) -> dict:
    """Offline, with W&B's own settings and caches under tmp_path, whatever the caller has."""
    return {
        "WANDB_MODE": "offline",
        "WANDB_API_KEY": "",
        "WANDB_PROJECT": "",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }


def train(run_dir: Path, env: dict, *overrides: str, kill: str = "none"):
    """One training run of `run_dir` (killing itself at `kill`, see tests/kill_driver.py)."""
    return subprocess.run(
        [sys.executable, str(DRIVER), "once", kill, *SMALL_OVERRIDES, f"run.dir={run_dir}"]
        + list(overrides),
        cwd=PROJECT_ROOT,
        env={**_subprocess_env(), "CUDA_VISIBLE_DEVICES": "", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def starts(run_dir: Path) -> list[Path]:
    """The folder of each start of the run's W&B run(s), oldest first."""
    return sorted(run_dir.glob("wandb/offline-run-*"))


def history(folder: Path) -> list[dict]:
    """The history rows of one start, as logged (`_step` is the optimizer step)."""
    rows = []
    for record in transaction_records(next(folder.glob("run-*.wandb"))):
        if record.HasField("history"):
            # An item is named by `key` or, in newer W&B versions, by its `nested_key` path.
            items = record.history.item
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
    return rows


def assert_one_run_equal_to_metrics_csv(run_dir: Path) -> str:
    """All starts belong to one W&B run whose rows are those of metrics.csv, each step once
    (timings may differ where a row reached W&B before a kill); returns the run id."""
    folders = starts(run_dir)
    ids = {folder.name.rsplit("-", 1)[1] for folder in folders}
    assert len(ids) == 1, [folder.name for folder in folders]
    logged = [row for folder in folders for row in history(folder)]
    assert sorted(row["_step"] for row in logged) == [8, 16, 24]
    by_step = {row["_step"]: row for row in logged}
    for expected in _read_metrics(run_dir):
        row = by_step[int(expected["step"])]
        for column, text in expected.items():
            if column not in TIMING_COLUMNS and column != "step" and text != "":  # "": no EMA
                assert math.isclose(row[column], float(text), rel_tol=1e-5), (column, row)
    return ids.pop()


def test_an_offline_run_keeps_metrics_and_files_and_a_resume_logs_no_step_twice(
    tmp_path, wandb_env
):
    run_dir = tmp_path / "runs" / "first"
    result = train(run_dir, wandb_env, *EPOCHS)
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = assert_one_run_equal_to_metrics_csv(run_dir)
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")["trackers"]
    assert saved == {"wandb_log": {"run_id": run_id}}
    files = starts(run_dir)[0] / "files"
    for name in ("config.yaml", "loss.png", "accuracy.png", "checkpoints/best.pt"):
        assert (files / name).is_file(), name
    sync = [line for line in result.stdout.splitlines() if "wandb sync" in line]
    assert len(sync) == 1 and f"offline-run-*-{run_id}" in sync[0], result.stdout[-2000:]

    # Resumed from the end of epoch 1, the run repeats epochs 2 and 3, whose rows W&B has.
    older = run_dir / "checkpoints" / "step-00000008.pt"
    result = train(run_dir, wandb_env, *EPOCHS, f"run.resume={older}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(starts(run_dir)) == 2
    assert assert_one_run_equal_to_metrics_csv(run_dir) == run_id


def test_sigkill_between_tracker_and_checkpoint_then_resume_keeps_one_run(tmp_path, wandb_env):
    run_dir = tmp_path / "runs" / "killed"
    # Epoch 1's row goes to W&B (which flushes its log only every few seconds), then the run
    # dies before the folder has any checkpoint: the next start begins afresh, in the same
    # W&B run.
    killed = train(run_dir, wandb_env, *EPOCHS, kill="save_before:8")
    assert killed.returncode == -9, killed.stderr[-3000:]
    # Epoch 2's row goes to W&B, then the run dies before that epoch's checkpoint.
    killed = train(run_dir, wandb_env, *EPOCHS, "run.resume=auto", kill="save_before:16")
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = train(run_dir, wandb_env, *EPOCHS, "run.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(starts(run_dir)) == 3
    assert_one_run_equal_to_metrics_csv(run_dir)


def test_an_unreachable_server_costs_one_warning_not_the_run(tmp_path, wandb_env):
    run_dir = tmp_path / "runs" / "unreachable"
    nobody = {
        **wandb_env,
        "WANDB_MODE": "online",
        "WANDB_API_KEY": "0" * 40,
        "WANDB_BASE_URL": "http://127.0.0.1:9",
        "WANDB_INIT_TIMEOUT": "5",
    }
    result = train(run_dir, nobody)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stdout.splitlines() if "tracker wandb failed" in line]
    assert len(warnings) == 1, result.stdout[-3000:]
    assert len(_read_metrics(run_dir)) == 1


def test_wandb_not_installed_is_one_line_naming_the_pip_command(tmp_path):
    """tracker=wandb on a machine without wandb (here: its import halted): one warning
    naming `pip install wandb`, and the run trains."""
    run_dir = tmp_path / "runs" / "without"
    hide = "import runpy, sys; sys.modules['wandb'] = None; sys.argv = sys.argv[1:]; "
    hide += "runpy.run_path('train.py', run_name='__main__')"
    result = subprocess.run(
        [sys.executable, "-c", hide, "train.py", *SMALL_OVERRIDES, f"run.dir={run_dir}"],
        cwd=PROJECT_ROOT,
        env={**_subprocess_env(), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (warning,) = [line for line in result.stdout.splitlines() if "tracker wandb" in line]
    assert "pip install wandb" in warning
    assert len(_read_metrics(run_dir)) == 1
