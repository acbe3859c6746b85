"""What a run shows and leaves behind: log lines, plots, run folders, the summary."""

import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT, SMALL_OVERRIDES, _subprocess_env
from PIL import Image

from {{ cookiecutter.package_name }}.log import METRIC_COLUMNS
from {{ cookiecutter.package_name }}.plots import early_stop_epoch, epoch_figures, plot_run

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


@pytest.mark.slow
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


@pytest.mark.slow
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


def metrics_rows(val_acc: list[float], loss: float = 0.5, ema: list[float] | None = None):
    """Rows of metrics.csv as read back (text), epochs from 0, the loss falling."""
    rows = []
    for index, accuracy in enumerate(val_acc):
        row = dict.fromkeys(METRIC_COLUMNS, "")
        row.update(epoch=str(index), step=str(10 * (index + 1)), val_acc=str(accuracy))
        row.update(train_acc=str(accuracy), val_balanced_acc=str(accuracy), lr="0.01")
        row.update(train_loss=str(loss / (index + 1)), val_loss=str(loss / (index + 1)))
        if ema is not None:
            row["val_acc_ema"] = str(ema[index])
        rows.append(row)
    return rows


def marks(figure) -> dict[str, float]:
    """{label: epoch} of the vertical lines on the figure's axes."""
    (axes,) = figure.axes
    return {
        line.get_label(): line.get_xdata()[0]
        for line in axes.get_lines()
        if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2
    }


def test_loss_is_on_a_log_scale_and_both_plots_mark_the_best_epoch():
    figures = dict(epoch_figures(metrics_rows([0.5, 0.9, 0.8, 0.9])))
    # The first of the best epochs (counted from 1), as best.pt holds it; no early stop.
    for name in ("loss.png", "accuracy.png"):
        assert marks(figures[name]) == {"best: epoch 2": 2}, name
    assert figures["loss.png"].axes[0].get_yscale() == "log"
    assert figures["accuracy.png"].axes[0].get_yscale() == "linear"
    (axes,) = figures["loss.png"].axes
    assert list(axes.get_lines()[0].get_xdata()) == [1, 2, 3, 4]  # as the console counts


def test_a_loss_of_zero_stays_linear_and_the_moving_average_chooses_the_best():
    rows = metrics_rows([0.9, 0.5, 0.6], ema=[0.4, 0.5, 0.7])
    rows[1]["train_loss"] = "0.0"
    figures = dict(epoch_figures(rows))
    assert figures["loss.png"].axes[0].get_yscale() == "linear"
    assert marks(figures["accuracy.png"]) == {"best: epoch 3": 3}  # val_acc_ema, not val_acc


def test_an_early_stop_is_marked_where_the_run_stopped(tmp_path):
    rows = metrics_rows([0.5, 0.9, 0.8, 0.7])  # best epoch 2, then 2 epochs without
    figures = dict(epoch_figures(rows, stopped_early=4))
    assert marks(figures["loss.png"]) == {"best: epoch 2": 2, "stopped early after epoch 4": 4}

    def stop(epochs, patience):
        config = f"train:\n  epochs: {epochs}\n  early_stop_patience: {patience}\n"
        (tmp_path / "config.yaml").write_text(config, encoding="utf-8")
        return early_stop_epoch(tmp_path, rows)

    assert stop(10, 2) == 4
    assert stop(4, 2) is None  # all its epochs trained: it ended, not early
    assert stop(10, 3) is None  # the patience was not used up: stopped otherwise
    assert stop(10, 0) is None and stop(10, "null") is None  # no early stopping
    (tmp_path / "config.yaml").write_text("train: [1, 2]\n", encoding="utf-8")
    assert early_stop_epoch(tmp_path, rows) is None
    (tmp_path / "config.yaml").unlink()
    assert early_stop_epoch(tmp_path, rows) is None  # nothing to tell: no mark


@pytest.mark.parametrize("config", [True, False])
def test_plot_run_draws_from_a_run_folder_with_or_without_its_config(tmp_path, config):
    header = ",".join(METRIC_COLUMNS)
    lines = [
        ",".join(row[column] for column in METRIC_COLUMNS)
        for row in metrics_rows([0.5, 0.9, 0.8, 0.7])
    ]
    (tmp_path / "metrics.csv").write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    if config:
        text = "train:\n  epochs: 10\n  early_stop_patience: 2\n"
        (tmp_path / "config.yaml").write_text(text, encoding="utf-8")
    assert plot_run(tmp_path) == [tmp_path / "loss.png", tmp_path / "accuracy.png"]


@pytest.mark.slow
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


@pytest.mark.slow
def test_resuming_through_runs_latest_keeps_the_link_pointing_at_the_run(tmp_path):
    first = train(*SMALL_OVERRIDES, "train.max_steps=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    latest = tmp_path / "runs" / "latest"
    folder = latest.resolve()
    again = train(*SMALL_OVERRIDES, "train.max_steps=2", "run.resume=runs/latest", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert latest.is_symlink() and latest.resolve() == folder  # not a link to itself
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(["latest", folder.name])
    assert "stopped at step 2" in again.stdout + again.stderr


@pytest.mark.slow
def test_run_name_names_the_default_folder(tmp_path):
    result = train(*SMALL_OVERRIDES, "train.max_steps=1", "run.name=baseline", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = [p.name for p in (tmp_path / "runs").iterdir() if p.name != "latest"]
    assert len(names) == 1 and names[0].startswith("baseline-")
