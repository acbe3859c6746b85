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
from .yaml_files import YamlError, read_mapping

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
    plt = _pyplot()
    metrics = _whole_rows(MetricsCSV(run_dir / "metrics.csv"), "loss.png and accuracy.png")
    if metrics:
        for file_name, figure in epoch_figures(metrics, early_stop_epoch(run_dir, metrics)):
            written.append(_save(figure, run_dir / file_name, plt, PLOTS[file_name][1]))
    learning_rates = _whole_rows(LearningRateCSV(run_dir / "lr.csv"), "lr.png")
    if learning_rates:
        figure, axes = plt.subplots(figsize=(6, 4))
        steps = [int(row["step"]) for row in learning_rates]
        axes.plot(steps, [_number(row["lr"]) for row in learning_rates], label="lr")
        axes.set(xlabel="optimizer step", ylabel="learning rate", title="learning-rate schedule")
        axes.grid(alpha=0.3)
        written.append(_save(figure, run_dir / "lr.png", plt, curves=("lr",)))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no window, works without a display
    import matplotlib.pyplot as plt

    return plt


def epoch_figures(metrics: list[dict], stopped_early: int | None = None) -> list[tuple]:
    """(file name, figure) of loss.png and accuracy.png, drawn from the rows of
    metrics.csv; epochs count from 1, as the console does (the file's column from 0).

    The loss is on a log scale where every value is positive: after the first epochs a
    linear scale shows it as a flat line at zero. Both plots mark the best epoch (the one
    best.pt holds) and, given `stopped_early`, the epoch after which early stopping ended
    the run."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    epochs = [int(row["epoch"]) + 1 for row in metrics]
    best = best_epoch(metrics)
    figures = []
    for file_name, (quantity, columns) in PLOTS.items():
        figure, axes = plt.subplots(figsize=(6, 4))
        values = []
        for column in columns:
            curve = [_number(row[column]) for row in metrics]
            axes.plot(epochs, curve, marker="o", label=column.replace("_", " "))
            values += curve
        if quantity == "loss" and all(value > 0 for value in values if not math.isnan(value)):
            axes.set_yscale("log")
        if best is not None:
            axes.axvline(best, color="tab:green", linestyle="--", label=f"best: epoch {best}")
        if stopped_early is not None:
            label = f"stopped early after epoch {stopped_early}"
            axes.axvline(stopped_early, color="tab:red", linestyle=":", label=label)
        axes.set(xlabel="epoch", ylabel=quantity, title=f"{quantity} per epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
        figures.append((file_name, figure))
    return figures


def best_epoch(metrics: list[dict]) -> int | None:
    """The epoch (from 1) that best.pt holds: the first with the highest validation
    accuracy, of the moving average where there is one (as training chooses it)."""
    scores = [_number(row.get("val_acc_ema") or row["val_acc"]) for row in metrics]
    finite = [(score, -index) for index, score in enumerate(scores) if not math.isnan(score)]
    return -max(finite)[1] + 1 if finite else None


def early_stop_epoch(run_dir: Path, metrics: list[dict]) -> int | None:
    """The epoch (from 1) after which early stopping ended the run, or None.

    Training checks before each epoch whether train.early_stop_patience epochs have passed
    without a better validation accuracy; a run that ended before train.epochs with that
    many epochs behind its best stopped there (config.yaml holds both settings)."""
    try:
        config, _ = read_mapping(run_dir / "config.yaml")
        train = config.get("train") or {}
        epochs, patience = int(train["epochs"]), int(train["early_stop_patience"] or 0)
    except (OSError, YamlError, KeyError, TypeError, ValueError, AttributeError):
        return None  # no readable config.yaml: draw the curves without the mark
    best, last = best_epoch(metrics), int(metrics[-1]["epoch"]) + 1
    if best is None or patience <= 0 or last >= epochs or last - best < patience:
        return None
    return last


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
