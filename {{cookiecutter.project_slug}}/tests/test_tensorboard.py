"""tracker=tensorboard: the scalars, sample images and graph land in readable event files."""

import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT, SMALL_OVERRIDES, _subprocess_env
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# Left out of the quick subset (pytest -m "not slow"): every test here trains a run in a process and
# reads its event files.
pytestmark = pytest.mark.slow


def test_event_files_hold_the_metrics_samples_and_graph(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "train.py", *SMALL_OVERRIDES, "train.epochs=2", f"run.dir={run_dir}"],
        cwd=PROJECT_ROOT,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    expected = {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "samples_per_s"}
    assert expected <= set(tags["scalars"])
    val_acc = events.Scalars("val_acc")
    assert [event.step for event in val_acc] == [8, 16]  # one point per epoch, at its step
    assert all(0.0 <= event.value <= 1.0 for event in val_acc)
    assert "samples" in tags["images"]
    assert tags["graph"] is True
