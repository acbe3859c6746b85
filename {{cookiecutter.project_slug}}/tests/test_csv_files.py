"""A metrics.csv or lr.csv that is not as this version writes it (cut short, edited, garbage,
another version's columns, not UTF-8) costs at most one warning naming it, never a traceback:
a resume keeps the original as `<name>.corrupt-N` and goes on with its whole rows; the plots
of a bad file are not drawn."""

import csv

import pytest

from {{ cookiecutter.package_name }}.csv_files import MAX_LINE, read_rows
from {{ cookiecutter.package_name }}.log import (
    LR_COLUMNS,
    METRIC_COLUMNS,
    LearningRateCSV,
    MetricsCSV,
    read_csv,
)
from {{ cookiecutter.package_name }}.plots import plot_run
from {{ cookiecutter.package_name }}.train import main

HEADER = ",".join(METRIC_COLUMNS).encode()


def row_bytes(number: int, **changes: str) -> bytes:
    """The line of epoch `number` as this version writes it, with `changes` made to it."""
    values = {column: f"{number + 0.5}" for column in METRIC_COLUMNS}
    values.update(epoch=str(number), step=str(8 * (number + 1)), val_loss_ema="", val_acc_ema="")
    values.update(changes)
    return ",".join(values[column] for column in METRIC_COLUMNS).encode() + b"\r\n"


GOOD = [row_bytes(epoch) for epoch in range(4)]
# What the file holds -> the epochs of the rows that are whole.
CORRUPT = {
    "last row cut short": (HEADER + b"\r\n" + b"".join(GOOD) + GOOD[0][:9], [0, 1, 2, 3]),
    "a half row inside": (HEADER + b"\r\n" + GOOD[0] + b"1,16,0.4\r\n" + GOOD[2], [0, 2]),
    "a value edited to words": (
        HEADER + b"\r\n" + GOOD[0] + row_bytes(1, val_acc="high") + GOOD[2],
        [0, 2],
    ),
    "two numbers in one value": (HEADER + b"\r\n" + GOOD[0] + row_bytes(1, lr="0.1 0.2"), [0]),
    "an empty step": (HEADER + b"\r\n" + GOOD[0] + row_bytes(1, step="") + GOOD[2], [0, 2]),
    "a negative epoch": (HEADER + b"\r\n" + row_bytes(0, epoch="-1") + GOOD[1], [1]),
    "rows out of order": (HEADER + b"\r\n" + GOOD[0] + GOOD[2] + GOOD[1] + GOOD[3], [0, 2, 3]),
    "a row twice": (HEADER + b"\r\n" + GOOD[0] + GOOD[1] + GOOD[1] + GOOD[2], [0, 1, 2]),
    "not UTF-8": (
        HEADER + b"\r\n" + GOOD[0] + b"\xff\xfe\x00bad,\x80\r\n" + GOOD[1],
        [0, 1],
    ),
    "NUL bytes": (HEADER + b"\r\n" + GOOD[0] + b"\x00" * 50 + b"\r\n" + GOOD[1], [0, 1]),
    "a line longer than any row": (
        HEADER + b"\r\n" + GOOD[0] + b"9" * (5 * MAX_LINE) + b"\r\n" + GOOD[1],
        [0, 1],
    ),
    "a quote left open": (HEADER + b"\r\n" + GOOD[0] + b'"2,24\r\n' + GOOD[1], [0, 1]),
    "garbage header": (b"\x89PNG\r\n\x1a\n" + b"".join(GOOD), []),
    "no header": (b"".join(GOOD), []),
    "a header with a column twice": (HEADER + b",epoch\r\n" + GOOD[0], []),
    "binary": (bytes(range(256)) * 40, []),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_a_corrupt_metrics_csv_is_set_aside_with_one_warning_and_its_whole_rows_kept(
    case, tmp_path, project_log
):
    content, epochs = CORRUPT[case]
    path = tmp_path / "metrics.csv"
    path.write_bytes(content)
    metrics = MetricsCSV(path)
    metrics.keep_epochs_before(100)
    warnings = [record.getMessage() for record in project_log.records]
    assert len(warnings) == 1 and str(path) in warnings[0], warnings
    assert "metrics.csv.corrupt-1" in warnings[0]
    assert (tmp_path / "metrics.csv.corrupt-1").read_bytes() == content  # nothing is lost
    assert [int(row["epoch"]) for row in read_csv(path)] == epochs
    metrics.write(dict.fromkeys(METRIC_COLUMNS, 1.0) | {"epoch": 10, "step": 88})
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames) == METRIC_COLUMNS
        assert [int(row["epoch"]) for row in reader] == [*epochs, 10]


def test_another_versions_columns_are_carried_over_by_name(tmp_path, project_log):
    """An older metrics.csv without val_balanced_acc, with a column this version lacks."""
    older = [column for column in METRIC_COLUMNS if column != "val_balanced_acc"] + ["gpu_mem"]
    path = tmp_path / "metrics.csv"
    lines = [",".join(older)] + [",".join(f"{epoch}" for _ in older) for epoch in range(3)]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    MetricsCSV(path).keep_epochs_before(2)
    warnings = [record.getMessage() for record in project_log.records]
    assert len(warnings) == 1 and "columns are not this version's" in warnings[0], warnings
    rows = read_csv(path)
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert rows[1]["val_acc"] == "1" and rows[1]["val_balanced_acc"] == ""
    assert "gpu_mem" not in rows[0] and (tmp_path / "metrics.csv.corrupt-1").is_file()


def test_a_whole_file_costs_no_warning_and_keeps_every_row(tmp_path, project_log):
    path = tmp_path / "metrics.csv"
    path.write_bytes(HEADER + b"\r\n" + b"".join(GOOD))
    MetricsCSV(path).keep_epochs_before(3)
    assert not project_log.records
    assert [row["epoch"] for row in read_csv(path)] == ["0", "1", "2"]
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_a_second_corrupt_file_is_set_aside_beside_the_first(tmp_path, project_log):
    path = tmp_path / "lr.csv"
    for expected in ("lr.csv.corrupt-1", "lr.csv.corrupt-2"):
        path.write_bytes(b"step,lr\r\n1,0.1\r\n2,zero\r\n3,0.3\r\n")
        LearningRateCSV(path).keep_before(10)
        assert (tmp_path / expected).read_bytes() == b"step,lr\r\n1,0.1\r\n2,zero\r\n3,0.3\r\n"
    assert len(project_log.records) == 2
    assert path.read_bytes() == b"step,lr\r\n1,0.1\r\n3,0.3\r\n"


@pytest.mark.parametrize("kind", ["folder", "link"])
def test_a_metrics_csv_that_is_not_a_file_is_moved_aside(kind, tmp_path, project_log):
    path = tmp_path / "metrics.csv"
    target = tmp_path / "elsewhere.txt"
    target.write_text("someone's own file\n", encoding="utf-8")
    path.mkdir() if kind == "folder" else path.symlink_to(target)
    MetricsCSV(path).keep_epochs_before(1)
    assert len(project_log.records) == 1 and "not a regular file" in project_log.records[0].message
    assert path.is_file() and not path.is_symlink() and read_csv(path) == []
    assert target.read_text(encoding="utf-8") == "someone's own file\n"  # never written


def test_reading_a_corrupt_file_only_reads(tmp_path):
    """read_rows (the plots, the sweep's reader of a growing file) changes nothing."""
    path = tmp_path / "lr.csv"
    path.write_bytes(b"step,lr\r\n1,0.1\r\n2,0.")  # a row being written
    read = read_rows(path, LR_COLUMNS, "step")
    assert read.rows == [{"step": "1", "lr": "0.1"}] and "1 line(s)" in read.problem
    assert path.read_bytes() == b"step,lr\r\n1,0.1\r\n2,0." and len(list(tmp_path.iterdir())) == 1


def test_a_bad_file_skips_its_plots_with_one_warning(tmp_path, project_log):
    (tmp_path / "metrics.csv").write_bytes(HEADER + b"\r\n" + GOOD[0] + b"\xff\xfe\r\n")
    (tmp_path / "lr.csv").write_bytes(b"step,lr\r\n1,0.1\r\n2,0.2\r\n")
    assert plot_run(tmp_path) == [tmp_path / "lr.png"]
    warnings = [record.getMessage() for record in project_log.records]
    assert len(warnings) == 1 and str(tmp_path / "metrics.csv") in warnings[0], warnings
    assert "loss.png and accuracy.png not drawn" in warnings[0]
    assert not (tmp_path / "loss.png").exists() and (tmp_path / "lr.png").is_file()


@pytest.mark.slow
def test_a_resume_goes_on_from_corrupt_records(make_config, tmp_path):
    """A real resume, after the run's metrics.csv lost its samples_per_s column (another
    version's) and got a non-UTF-8 line and a cut-short last row, and its lr.csv got a column
    more: one warning for each file, every whole row kept, the plots drawn."""
    run_dir = tmp_path / "run"
    assert main(make_config("train.epochs=2", "train.max_steps=8", run_dir=run_dir)) == 0
    metrics, rates = run_dir / "metrics.csv", run_dir / "lr.csv"
    original = metrics.read_bytes()
    older = [line.rpartition(b",")[0] for line in original.splitlines()]  # no samples_per_s
    metrics.write_bytes(b"\r\n".join(older) + b"\r\n\xc3\x28 edited\r\n1,16,0.3")
    lines = rates.read_bytes().splitlines()  # a version that also wrote the momentum
    extended = [line + (b",momentum" if n == 0 else b",0.9") for n, line in enumerate(lines)]
    rates.write_bytes(b"\r\n".join(extended) + b"\r\n")
    resume = make_config("train.epochs=2", "run.resume=auto", run_dir=run_dir)
    assert main(resume) == 0
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    assert len([line for line in warnings if "metrics.csv" in line]) == 1, warnings
    assert len([line for line in warnings if "lr.csv" in line]) == 1, warnings
    assert [row["epoch"] for row in read_csv(metrics)] == ["0", "1"]
    steps = [row["step"] for row in read_rows(rates, LR_COLUMNS, "step").rows]
    assert steps == [str(step) for step in range(1, 17)]
    assert (run_dir / "metrics.csv.corrupt-1").read_bytes().startswith(older[0])
    assert "done in" in log  # its average speed taken over the rows that have one
    assert (run_dir / "loss.png").is_file() and (run_dir / "lr.png").is_file()
