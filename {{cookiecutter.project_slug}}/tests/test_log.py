"""The metrics CSV, the logger and the progress bar."""

import csv
import errno
import logging
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from {{ cookiecutter.package_name }}.config import TrainConfig
from {{ cookiecutter.package_name }}.device import float32_precision
from {{ cookiecutter.package_name }}.engine import Trainer, TrainState, train_one_epoch
from {{ cookiecutter.package_name }}.log import (
    LOGGER_NAME,
    METRIC_COLUMNS,
    MetricsCSV,
    ProgressBar,
    progress_bar,
    setup_logging,
)


def row_for(epoch: int) -> dict:
    measured = {column: float(epoch) + 0.5 for column in METRIC_COLUMNS}
    return measured | {"epoch": epoch, "step": 8 * (epoch + 1)}


def read_rows(path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def test_metrics_csv_writes_a_header_and_one_row_per_epoch(tmp_path):
    metrics = MetricsCSV(tmp_path / "metrics.csv")
    for epoch in range(3):
        metrics.write(row_for(epoch))
    header, rows = read_rows(tmp_path / "metrics.csv")
    assert header == list(METRIC_COLUMNS)
    for column in ("epoch", "train_loss", "val_loss", "val_acc", "lr"):
        assert column in header
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    assert float(rows[2]["val_loss"]) == 2.5


def test_the_run_folder_page_names_the_columns_of_metrics_csv():
    page = Path(__file__).resolve().parents[1] / "docs" / "run-folder.md"
    listed = re.search(
        r"^metrics\.csv +one row per epoch: ([\w,]+)", page.read_text(encoding="utf-8"), re.M
    )
    assert listed is not None, "docs/run-folder.md's listing has no metrics.csv line"
    assert tuple(listed[1].split(",")) == METRIC_COLUMNS


def test_an_append_that_fails_midway_leaves_no_half_row(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    metrics = MetricsCSV(path)
    metrics.write(row_for(0))
    before = path.read_bytes()

    def half_a_row_then_a_full_disk(writer, rows):
        writer.writer.writerow(["1", "2"])  # the start of a row reaches the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", half_a_row_then_a_full_disk)
    with pytest.raises(OSError, match="No space left"):
        metrics.write(row_for(1))
    assert path.read_bytes() == before


def test_resumed_run_drops_the_rows_it_will_write_again(tmp_path):
    # A run killed after writing epoch 2's row but before saving its checkpoint resumes in
    # epoch 2: that row must not appear twice.
    metrics = MetricsCSV(tmp_path / "metrics.csv")
    for epoch in range(3):
        metrics.write(row_for(epoch))
    metrics.keep_epochs_before(2)
    metrics.write(row_for(2))
    header, rows = read_rows(tmp_path / "metrics.csv")
    assert header == list(METRIC_COLUMNS)
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    MetricsCSV(tmp_path / "absent.csv").keep_epochs_before(0)  # no file yet: nothing to do
    assert not (tmp_path / "absent.csv").exists()


def test_only_rank_0_writes_the_log_file(tmp_path):
    logger = setup_logging(tmp_path / "rank1.log", rank=1)
    logger.warning("from rank 1")
    assert not (tmp_path / "rank1.log").exists()
    assert logger.name == LOGGER_NAME and logger.level == logging.WARNING

    logger = setup_logging(tmp_path / "rank0.log", rank=0)
    logger.info("hello from rank 0")
    for handler in logger.handlers:
        handler.flush()
    assert "hello from rank 0" in (tmp_path / "rank0.log").read_text(encoding="utf-8")
    assert len(logger.handlers) == 2  # console and file, not one more per call


class RecordingBar:
    """A tqdm stand-in that records what the loop does to it, in order."""

    def __init__(self) -> None:
        self.events = []

    def update(self, count: int = 1) -> None:
        self.events.append(("update", count))

    def set_postfix_str(self, text: str) -> None:
        self.events.append(("postfix", text))

    def close(self) -> None:
        self.events.append(("close", None))


def small_trainer(batches: int = 6):
    """A linear model, its optimizer and `batches` batches of 5 random samples; the step
    log lines (train.log_every) are far apart, so that only the bar shows figures."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    cpu = torch.device("cpu")
    trainer = Trainer(
        model, optimizer, scheduler, False, float32_precision(cpu), TrainConfig(log_every=1000), cpu
    )
    data = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(batches)]
    return trainer, data


def epoch_figures(state: TrainState, lr: float) -> str:
    """The postfix the bar must end on: the loss and accuracy of all the epoch's batches."""
    loss, accuracy = state.loss_sum / state.seen, state.correct / state.seen
    return f"loss {loss:.4f} acc {accuracy:.3f} lr {lr:.3g}"


def test_the_progress_bar_shows_the_loss_from_the_first_step_and_ends_on_the_epoch():
    trainer, data = small_trainer()
    recording = RecordingBar()
    state = TrainState()
    train_one_epoch(trainer, data, len(data), state, progress=ProgressBar(recording))
    events = recording.events
    # The running loss of the first batch, right after it (not train.log_every steps later).
    assert events[0] == ("update", 1)
    kind, text = events[1]
    assert kind == "postfix" and re.fullmatch(r"loss \d\.\d{4} acc \d\.\d{3} lr 0\.1", text)
    assert state.seen == 30
    assert events[-1] == ("postfix", epoch_figures(state, trainer.lr))
    assert sum(count for kind, count in events if kind == "update") == len(data)


def test_the_progress_bar_refreshes_its_figures_every_refresh_s():
    trainer, data = small_trainer()
    recording = RecordingBar()
    bar = ProgressBar(recording)
    bar.REFRESH_S = 0.0  # this bar's own setting: figures after every step
    train_one_epoch(trainer, data, len(data), TrainState(), progress=bar)
    kinds = [kind for kind, _ in recording.events]
    assert kinds == ["update", "postfix"] * len(data) + ["postfix"]
    bar.REFRESH_S = 3600.0
    assert not bar.due()  # shown just now: not due again within the hour


def test_the_live_bar_draws_the_running_figures_on_the_terminal(capsys, monkeypatch):
    # A terminal wide enough for the whole line (the bar takes the terminal's width, and a
    # narrow one would cut the figures at its end, as tqdm does).
    monkeypatch.setenv("COLUMNS", "200")
    trainer, data = small_trainer()
    state = TrainState()
    bar = progress_bar(len(data), 0, "epoch 1/1", enabled=True)
    train_one_epoch(trainer, data, len(data), state, progress=bar)
    bar.close()
    drawn = capsys.readouterr().out.split("\r")
    first_with_figures = next(line for line in drawn if "loss " in line)
    assert "1/6" in first_with_figures  # already after the first batch
    assert epoch_figures(state, trainer.lr) in [line for line in drawn if line.strip()][-1]
    assert "epoch 1/1" in drawn[-1] and "6/6" in drawn[-1]


@pytest.mark.slow
@pytest.mark.parametrize("in_place", ["link", "dangling link", "folder"])
def test_a_train_log_that_is_not_a_regular_file_is_set_aside_never_appended_through(
    make_config, tmp_path, capsys, in_place
):
    from {{ cookiecutter.package_name }}.train import run

    folder = tmp_path / "run"
    assert run(make_config("train.max_steps=1", run_dir=folder)) == 0
    log = folder / "train.log"
    log.unlink()
    victim = tmp_path / "victim.txt"
    if in_place == "folder":
        log.mkdir()
    else:
        if in_place == "link":
            victim.write_text("the user's own file\n", encoding="utf-8")
        log.symlink_to(victim)
    capsys.readouterr()

    assert run(make_config("train.max_steps=2", "run.resume=auto", run_dir=folder)) == 0

    if in_place == "link":
        assert victim.read_text(encoding="utf-8") == "the user's own file\n"
    else:
        assert not victim.exists()
    aside = folder / "train.log.corrupt-1"
    assert aside.is_symlink() or aside.is_dir()
    assert log.is_file() and not log.is_symlink()
    warnings = [line for line in capsys.readouterr().out.splitlines() if "corrupt-1" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "not a regular file" in warnings[0]
    assert "not a regular file" in log.read_text(encoding="utf-8")
