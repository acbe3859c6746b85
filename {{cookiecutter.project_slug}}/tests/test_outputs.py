"""What a run shows and leaves behind: log lines, plots, run folders, the summary."""

import subprocess
import sys

from conftest import PROJECT_ROOT, SMALL_OVERRIDES, _subprocess_env
from PIL import Image

TWO_EPOCHS = (*SMALL_OVERRIDES, "train.epochs=2", "train.log_every=2")


def train(*args: str, cwd=PROJECT_ROOT) -> subprocess.CompletedProcess:
    """`python train.py ARGS` from `cwd`, its output captured (so not a terminal)."""
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *args],
        cwd=cwd,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_run_without_a_terminal_prints_plain_periodic_lines(tmp_path):
    result = train(*TWO_EPOCHS, f"run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    step_lines = [line for line in result.stdout.splitlines() if " step " in line]
    assert len(step_lines) == 8  # 16 optimizer steps, one line every 2
    assert "\r" not in result.stdout and "\x1b" not in result.stdout, "bar escape codes"
    assert "epoch 2/2" in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert "best val acc" in summary and "best.pt" in summary and "samples/s" in summary
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert "resolved config:" in log and "python " in log and "world size" in log


def test_plots_are_valid_pngs_with_their_curves(tmp_path):
    run_dir = tmp_path / "run"
    assert train(*TWO_EPOCHS, f"run.dir={run_dir}").returncode == 0
    expected = {
        "loss.png": "train_loss, val_loss",
        "accuracy.png": "train_acc, val_acc",
        "lr.png": "lr",
    }
    for name, curves in expected.items():
        with Image.open(run_dir / name) as image:
            image.verify()  # raises on a truncated or malformed PNG
        with Image.open(run_dir / name) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100
            assert image.text["Description"] == f"curves: {curves}"
    lr_rows = (run_dir / "lr.csv").read_text().strip().splitlines()
    assert lr_rows[0] == "step,lr" and len(lr_rows) == 1 + 16  # one row per optimizer step


def test_two_runs_never_share_a_folder_and_latest_points_at_the_newest(tmp_path):
    first = train(*SMALL_OVERRIDES, "train.max_steps=1", cwd=tmp_path)
    second = train(*SMALL_OVERRIDES, "train.max_steps=1", cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    folders = sorted(p for p in (tmp_path / "runs").iterdir() if p.name != "latest")
    assert len(folders) == 2 and all(p.name.startswith("run-") for p in folders)
    for folder in folders:
        assert (folder / "checkpoints" / "last.pt").is_file()
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and latest.resolve() == folders[-1].resolve()


def test_run_name_names_the_default_folder(tmp_path):
    result = train(*SMALL_OVERRIDES, "train.max_steps=1", "run.name=baseline", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = [p.name for p in (tmp_path / "runs").iterdir() if p.name != "latest"]
    assert len(names) == 1 and names[0].startswith("baseline-")
