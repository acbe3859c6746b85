"""The metrics CSV and the logger."""

import csv
import logging

from {{ cookiecutter.package_name }}.log import (
    LOGGER_NAME,
    METRIC_COLUMNS,
    MetricsCSV,
    setup_logging,
)


def row_for(epoch: int) -> dict:
    return {column: float(epoch) + 0.5 for column in METRIC_COLUMNS} | {"epoch": epoch}


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
