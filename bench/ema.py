"""The moving average of the weights (train.ema_decay) on the recipe's image collections.

    python bench/ema.py [--only NAME ...] [--decays D ...] [--quick] [--json PATH]

Bakes the default project and, for each collection of bench/image_collections.py, runs the
one-line default (`python train.py data.dataset=imagefolder data.root=<collection>`) once
as it is and once per decay with `train.ema_decay=D`, one run at a time, each in a fresh
process. A run's accuracy is its best validation accuracy: of the weights (`val_acc`)
without the average, of the average (`val_acc_ema`, which chooses best.pt) with it. Prints
a Markdown table of accuracy and wall time per collection. --quick checks the script: the
2 smallest collections, 1 epoch each.
"""

import argparse
import csv
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from image_collections import DEFAULT_ROOT, ensure
from recipe import Run, bake, chosen_collections, train

DECAYS = (0.99, 0.999)


def best_of(metrics: Path, column: str) -> float | None:
    """The best value of `column` in a metrics.csv (None: no such rows)."""
    try:
        with metrics.open(newline="") as file:
            values = [float(row[column]) for row in csv.DictReader(file) if row.get(column)]
    except OSError:
        return None
    return max(values, default=None)


def measure(project: Path, runs: Path, root: Path, decays: list[float], quick: bool) -> dict:
    """{"off": Run, "0.99": Run, ...} for the collection in `root`; a run with the average
    reports the average's best accuracy."""
    base = ["data.dataset=imagefolder", f"data.root={root}"]
    if quick:
        base.append("train.epochs=1")
    results = {}
    for decay in [None, *decays]:
        label = "off" if decay is None else f"{decay:g}"
        extra = [] if decay is None else [f"train.ema_decay={decay}"]
        run = train(project, runs, Run(f"{root.name}-ema-{label}", [*base, *extra]), False)
        if decay is not None and run.error is None:
            run.best_val_acc = best_of(runs / run.name / "metrics.csv", "val_acc_ema")
        results[label] = run
    return results


def markdown_table(rows: dict[str, dict[str, Run]]) -> str:
    labels = list(next(iter(rows.values())))
    header = ["collection", *(f"EMA {label}" for label in labels)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, results in rows.items():
        cells = [
            "failed" if run.error else f"{100 * run.best_val_acc:.1f} % ({run.seconds:.0f} s)"
            for run in results.values()
        ]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="some of the collections")
    parser.add_argument("--decays", nargs="+", type=float, default=list(DECAYS))
    parser.add_argument("--quick", action="store_true", help="check the script, 1-epoch runs")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--collections", type=Path, default=DEFAULT_ROOT, help="image cache")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="ema-bench-") as folder:
        project = bake(Path(folder) / "bake")
        runs = Path(folder) / "runs"
        runs.mkdir()
        for collection in chosen_collections(args.only, args.quick):
            root = ensure(collection, args.collections)
            rows[collection.name] = measure(project, runs, root, args.decays, args.quick)
            print(f"{collection.name}: done", file=sys.stderr)
    print(markdown_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        raw = {
            name: {label: asdict(run) for label, run in results.items()}
            for name, results in rows.items()
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    return 1 if any(run.error for results in rows.values() for run in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
