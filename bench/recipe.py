"""The recipe benchmark: the one-line default against a small hand grid, on generated images.

    python bench/recipe.py [--only NAME ...] [--quick] [--json PATH] [--collections DIR]
        [--epochs N ...] [--lr LR ...] [--batch-size B ...] [--image-size S ...]
        [--grid-from EARLIER.json] [--extra KEY=VALUE ...]

Bakes the default project, generates the collections of bench/image_collections.py (cached in
--collections, default bench/results/collections/), then, for each collection, runs from the
baked project, each in a fresh process:
- the one-line default, `python train.py data.dataset=imagefolder data.root=<collection>
  run.dir=<folder>` and nothing else, alone on the machine, timed from start to exit;
- a hand grid over train.epochs x optim.lr x data.batch_size x data.image_size (GRID;
  --epochs, --lr, --batch-size and --image-size replace its values) with data.cache=true,
  no flips and no early stopping (each cell trains all its epochs, as a hand-tuned run
  would), two runs at a time with train.threads=1 each. Collections of photos (PHOTO_SIDE
  px and more) add the sides PHOTO_SIZES to the grid, and keep it to PHOTO_LRS and
  PHOTO_BATCHES so that the three sides cost about what the small collections' grid does;
- the grid's best cell once more with data.flip=true: a hand-tuner's first check of the
  augmentation (flips help photos; they change the class of some images, e.g. a mirrored
  "2" is a "5", which is why the default leaves them off).
A run's accuracy is the best validation accuracy in its metrics.csv (the one best.pt holds).
The goal of each collection: the default within 1 point of the grid's best (within one
validation image where there are fewer than 100), and for collections of up to 2,000 images,
the default under 60 s. Prints a Markdown table, writes the raw results with --json, exits 1
when a goal is missed. --extra adds settings to every run: with `model.name=resnet18
model.pretrained=true` it measures the fine-tuning recipe against a grid of the same
pretrained model (where the weights are in the local cache). --quick checks the script
itself: the 2 smallest collections, one grid cell and its flip check, every run 1 epoch.
"""

import argparse
import csv
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from image_collections import COLLECTIONS, DEFAULT_ROOT, Collection, by_name, ensure

TEMPLATE = Path(__file__).resolve().parent.parent
GRID = {
    "train.epochs": (10, 30),
    "optim.lr": (0.003, 0.01, 0.03),
    "data.batch_size": (32, 128),
    "data.image_size": (32,),
}
PHOTO_SIDE, PHOTO_SIZES = 64, (32, 64, 96)
PHOTO_LRS, PHOTO_BATCHES = (0.003, 0.01), (32,)
# Fewer epochs on a large collection: a hand-tuner's first guess there, and what keeps the
# whole benchmark within ~40 minutes on two cores.
LARGE_IMAGES, LARGE_EPOCHS = 5000, (5, 15)
QUICK_GRID = {
    "train.epochs": (1,),
    "optim.lr": (0.01,),
    "data.batch_size": (32,),
    "data.image_size": (32,),
}
GRID_FIXED = [
    "data.cache=true",
    "data.flip=false",
    "train.threads=1",
    "train.early_stop_patience=0",
]
FLIP_CHECK = "data.flip=true"
PARALLEL_RUNS = 2  # grid runs at a time, one thread each
TIMED_LIMIT_S, TIMED_UP_TO_IMAGES = 60.0, 2000
POINT = 0.01
VAL_IMAGES = re.compile(r"(\d+) train / (\d+) val images")


@dataclass
class Run:
    """One training process and what it reported."""

    name: str
    overrides: list[str]
    seconds: float = 0.0
    best_val_acc: float | None = None
    val_images: int | None = None
    error: str | None = None


def grid_cells(grid: dict) -> list[list[str]]:
    """Every combination of the grid's values, as command-line overrides."""
    return [
        [f"{key}={value}" for key, value in zip(grid, values, strict=True)]
        for values in itertools.product(*grid.values())
    ]


def train(project: Path, runs: Path, run: Run, one_thread: bool) -> Run:
    """Run `python train.py <overrides> run.dir=...` from the project, timed start to exit.
    Grid runs (one_thread) also get OMP_NUM_THREADS=1, so that two share two cores."""
    run_dir = runs / run.name
    command = [sys.executable, "train.py", *run.overrides, f"run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if one_thread else None
    start = time.perf_counter()
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    run.seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    (runs / f"{run.name}.out").write_text(output)
    found = VAL_IMAGES.search(output)
    run.val_images = int(found.group(2)) if found else None
    run.best_val_acc = best_val_acc(run_dir / "metrics.csv")
    if result.returncode != 0 or run.best_val_acc is None:
        run.error = f"exit code {result.returncode}: {output.strip()[-1500:]}"
    return run


def best_val_acc(metrics: Path) -> float | None:
    try:
        with metrics.open(newline="") as file:
            return max((float(row["val_acc"]) for row in csv.DictReader(file)), default=None)
    except (OSError, KeyError, ValueError):
        return None


@dataclass
class Outcome:
    """One collection's line of the table."""

    collection: str
    what: str
    images: int
    axes: dict  # the grid's values: {"train.epochs": (10, 30), ...}
    default: Run
    grid: list[Run]

    def best(self) -> Run | None:
        """The grid's best cell: epochs x lr x batch size, as the issue defines the grid (the
        flip check is reported beside it, see `flip_check`)."""
        finished = [run for run in self.grid if run.error is None and run is not self.flip_check()]
        return max(finished, key=lambda run: run.best_val_acc, default=None)

    def flip_check(self) -> Run | None:
        return next((run for run in self.grid if run.name.endswith("-flip")), None)

    def tolerance(self) -> float:
        """1 point, or one validation image where there are fewer than 100."""
        val_images = self.default.val_images
        return 1 / val_images if val_images and val_images < 100 else POINT

    def problems(self) -> list[str]:
        best, default = self.best(), self.default
        failed = [run.name for run in [default, *self.grid] if run.error]
        found = [f"failed: {', '.join(failed)}"] if failed else []
        if default.error or best is None:
            return found
        gap = best.best_val_acc - default.best_val_acc
        if gap > self.tolerance() + 1e-9:
            found.append(f"{100 * gap:.1f} points under the grid")
        if self.images <= TIMED_UP_TO_IMAGES and default.seconds >= TIMED_LIMIT_S:
            found.append(f"{default.seconds:.0f} s >= {TIMED_LIMIT_S:.0f} s")
        return found


def measure(
    project: Path,
    runs: Path,
    folders: dict,
    axes_of,
    quick: bool,
    earlier: list | None = None,
    extra: tuple[str, ...] = (),
) -> list[Outcome]:
    """Every default alone (their times are the measure), then every grid run two at a
    time, then each collection's flip check. `folders`: Collection -> its folder;
    `axes_of(collection)`: the grid's values for it; `earlier`: the rows of an earlier
    --json, whose grid runs (with their flip check) stand in for new ones where a row has
    the same collection and grid values; `extra`: settings added to every run (--extra)."""
    epochs = ["train.epochs=1"] if quick else []  # --quick: the default for 1 epoch too
    outcomes = []
    for collection, folder in folders.items():
        name, axes = collection.name, axes_of(collection)
        data = ["data.dataset=imagefolder", f"data.root={folder}", *extra]
        default = train(project, runs, Run(f"{name}-default", [*data, *epochs]), one_thread=False)
        print(f"{name}: default {describe_run(default)}", file=sys.stderr, flush=True)
        cells = earlier_grid(earlier or [], name, axes) or [
            Run(f"{name}-grid{number}", [*data, *GRID_FIXED, *cell])
            for number, cell in enumerate(grid_cells(axes))
        ]
        what = collection.describe()
        outcomes.append(Outcome(name, what, collection.images, axes, default, cells))
    # Longest first, so that the last runs do not leave a core idle.
    queue = [
        (outcome.images * epochs_of(run), run)
        for outcome in outcomes
        for run in outcome.grid
        if run.seconds == 0  # not taken from an earlier result
    ]
    in_pool(project, runs, [run for _, run in sorted(queue, key=lambda pair: -pair[0])])
    checks = []
    for outcome in outcomes:
        best = outcome.best()
        if best is not None and not any(run.name.endswith("-flip") for run in outcome.grid):
            checks.append(Run(f"{outcome.collection}-flip", [*best.overrides, FLIP_CHECK]))
            outcome.grid.append(checks[-1])
    in_pool(project, runs, checks)
    return outcomes


def earlier_grid(rows: list, name: str, axes: dict) -> list[Run] | None:
    """The grid runs of collection `name` in an earlier result, if its grid had `axes`.

    The grid does not depend on the project's automatic choices (every cell sets the
    epochs, lr and batch size, the cache and no early stopping), so a change to them can be
    measured by running the defaults alone against an earlier grid.
    """
    for row in rows:
        # A result from before the grid had sides: its runs had the side 32 and no flips.
        recorded = {"data.image_size": (32,), **row["axes"]}
        same_axes = {key: tuple(values) for key, values in recorded.items()} == axes
        if row["collection"] == name and same_axes:
            return [Run(**run) for run in row["grid"]]
    return None


def epochs_of(run: Run) -> int:
    return next(
        int(item.split("=")[1]) for item in run.overrides if item.startswith("train.epochs=")
    )


def in_pool(project: Path, runs: Path, queue: list[Run]) -> None:
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        for run in pool.map(lambda run: train(project, runs, run, one_thread=True), queue):
            print(f"{run.name}: {describe_run(run)}", file=sys.stderr, flush=True)


def describe_run(run: Run) -> str:
    if run.error:
        return f"FAILED ({run.error.splitlines()[-1]})"
    return f"{run.best_val_acc:.4f} in {run.seconds:.1f} s"


def settings_of(run: Run) -> str:
    """The grid values of a run, e.g. `epochs=30 lr=0.01 batch_size=32 flip=true`."""
    keys = (*GRID, FLIP_CHECK.split("=")[0])
    return " ".join(
        override.split(".", 1)[1] for override in run.overrides if override.split("=")[0] in keys
    )


def markdown_table(outcomes: list[Outcome]) -> str:
    lines = [
        "| collection | what it is | val images | default acc | default time "
        "| grid best acc (settings) | its time | grid best with flips | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join(lines + [table_row(outcome) for outcome in outcomes])


def table_row(outcome: Outcome) -> str:
    default, best = outcome.default, outcome.best()
    problems = outcome.problems()
    cells = [
        outcome.collection,
        outcome.what,
        str(default.val_images or "?"),
        percent(default),
        f"{default.seconds:.1f} s",
        f"{percent(best)} ({settings_of(best)})" if best else "failed",
        f"{best.seconds:.1f} s" if best else "-",
        percent(outcome.flip_check()),
        "goal met" if not problems else "; ".join(problems),
    ]
    return "| " + " | ".join(cells) + " |"


def percent(run: Run | None) -> str:
    if run is None or run.error:
        return "failed"
    return f"{100 * run.best_val_acc:.1f} %"


def bake(folder: Path) -> Path:
    """The default project, baked from this template (its hook's greeting kept off stdout)."""
    command = [sys.executable, "-m", "cookiecutter", "--no-input", str(TEMPLATE), "-o", str(folder)]
    subprocess.run(command, check=True, capture_output=True)
    return next(folder.glob("*/train.py")).parent


def chosen_collections(names: list[str] | None, quick: bool) -> list[Collection]:
    collections = by_name(names)
    if quick:
        collections = sorted(collections, key=lambda collection: collection.images)[:2]
    return collections


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = ", ".join(collection.name for collection in COLLECTIONS)
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"some of: {names}")
    parser.add_argument("--quick", action="store_true", help="check the script, 1-epoch runs")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--collections", type=Path, default=DEFAULT_ROOT, help="image cache")
    parser.add_argument(
        "--grid-from", type=Path, help="take the grid runs from this earlier --json result"
    )
    parser.add_argument(
        "--extra",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="settings added to every run, e.g. model.name=resnet18 model.pretrained=true "
        "(the pretrained weights must be in the local cache: python -m <package>.fetch_weights)",
    )
    for key, values in GRID.items():
        option = "--" + key.split(".")[1].replace("_", "-")
        kind = type(values[0])
        parser.add_argument(option, nargs="+", type=kind, help=f"the grid's {key} {values}")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    chosen = {key: getattr(args, key.split(".")[1]) for key in GRID}

    def axes_of(collection: Collection) -> dict:
        if args.quick:
            return QUICK_GRID
        axes = {key: tuple(chosen[key] or values) for key, values in GRID.items()}
        if not chosen["train.epochs"] and collection.images > LARGE_IMAGES:
            axes["train.epochs"] = LARGE_EPOCHS
        if min(collection.size) >= PHOTO_SIDE:
            photo = {
                "data.image_size": tuple(s for s in PHOTO_SIZES if s <= min(collection.size)),
                "optim.lr": PHOTO_LRS,
                "data.batch_size": PHOTO_BATCHES,
            }
            axes.update({key: values for key, values in photo.items() if not chosen[key]})
        return axes

    collections = chosen_collections(args.only, args.quick)
    folders = {collection: ensure(collection, args.collections) for collection in collections}
    with tempfile.TemporaryDirectory() as temporary:
        project = bake(Path(temporary))
        runs = Path(temporary) / "runs"
        runs.mkdir()
        earlier = json.loads(args.grid_from.read_text()) if args.grid_from else None
        outcomes = measure(project, runs, folders, axes_of, args.quick, earlier, tuple(args.extra))
    print(markdown_table(outcomes))
    if args.json:
        rows = [{**asdict(outcome), "problems": outcome.problems()} for outcome in outcomes]
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if any(outcome.problems() for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
