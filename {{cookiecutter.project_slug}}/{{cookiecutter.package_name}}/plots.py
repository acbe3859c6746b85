"""PNG plots of a run, drawn from its `metrics.csv` and `lr.csv` at the end of training.

matplotlib is imported only here, and only when plotting: it costs a second at start-up
that training does not need. A plot that cannot be written (a full disk, say) costs one
warning, never the run: its checkpoints and CSV files are saved by then, and

    python -m <package>.plots RUN_FOLDER

draws the plots again from them.
"""

import logging
import math
import sys
from pathlib import Path

from .csv_files import CSVRead
from .files import atomic_path
from .log import CSVLog, LearningRateCSV, MetricsCSV

PLOTS = {
    "loss.png": ("loss", ("train_loss", "val_loss")),
    "accuracy.png": ("accuracy", ("train_acc", "val_acc")),
}

logger = logging.getLogger(__name__.rsplit(".", 1)[0])


def plot_run(run_dir: Path) -> list[Path]:
    """Write loss.png, accuracy.png (per epoch) and lr.png (per step); return the paths
    written. Each replaces its previous version atomically; where one cannot be written,
    one warning says so and the rest are not tried (the disk is full, or read-only)."""
    written = []
    try:
        _draw_plots(run_dir, written)
    except OSError as error:
        reason = error.strerror or str(error)
        logger.warning(
            "plots not written in %s (%s); the checkpoints and CSV files are saved: free "
            "disk space, then draw them with python -m %s.plots %s",
            run_dir,
            reason,
            __package__,
            run_dir,
        )
    return written


def _draw_plots(run_dir: Path, written: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no window, works without a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = _whole_rows(MetricsCSV(run_dir / "metrics.csv"), "loss.png and accuracy.png")
    if metrics:
        epochs = [int(row["epoch"]) + 1 for row in metrics]
        for file_name, (quantity, columns) in PLOTS.items():
            figure, axes = plt.subplots(figsize=(6, 4))
            for column in columns:
                values = [_number(row[column]) for row in metrics]
                axes.plot(epochs, values, marker="o", label=column.replace("_", " "))
            axes.set(xlabel="epoch", ylabel=quantity, title=f"{quantity} per epoch")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.grid(alpha=0.3)
            axes.legend()
            written.append(_save(figure, run_dir / file_name, plt, curves=columns))
    learning_rates = _whole_rows(LearningRateCSV(run_dir / "lr.csv"), "lr.png")
    if learning_rates:
        figure, axes = plt.subplots(figsize=(6, 4))
        steps = [int(row["step"]) for row in learning_rates]
        axes.plot(steps, [_number(row["lr"]) for row in learning_rates], label="lr")
        axes.set(xlabel="optimizer step", ylabel="learning rate", title="learning-rate schedule")
        axes.grid(alpha=0.3)
        written.append(_save(figure, run_dir / "lr.png", plt, curves=("lr",)))


def _whole_rows(table: CSVLog, plots: str) -> list[dict]:
    """The rows of `table` to draw `plots` from; none, with one warning, where the file is
    not as this version writes it (a plot of part of it would show a run that never was)."""
    try:
        read = table.read()
    except OSError as error:  # not readable: permission denied, say
        read = CSVRead([], f"it cannot be read ({error.strerror or error})")
    if read.problem is None:
        return read.rows
    logger.warning("%s: %s; %s not drawn from it", table.path, read.problem, plots)
    return []


def _number(text: str) -> float:
    return float(text) if text else math.nan  # empty: a column of another version


def _save(figure, path: Path, plt, curves: tuple[str, ...]) -> Path:
    figure.tight_layout()
    # The curve names go into the PNG's text metadata, so scripts (and the tests) can
    # tell what a plot shows without looking at it.
    try:
        with atomic_path(path) as temporary:  # a kill or a full disk keeps the previous plot
            figure.savefig(
                temporary,
                format="png",
                dpi=100,
                metadata={"Description": "curves: " + ", ".join(curves)},
            )
    finally:
        plt.close(figure)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1], "metrics.csv").is_file():
        usage = f"usage: python -m {__package__}.plots RUN_FOLDER (a folder with metrics.csv)"
        print(usage, file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    plots = plot_run(Path(sys.argv[1]))
    print("wrote " + ", ".join(str(path) for path in plots) if plots else "wrote no plot")
    sys.exit(0 if plots else 1)
