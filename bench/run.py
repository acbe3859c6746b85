"""The benchmarks of the training loop, every contender interleaved in rounds in one invocation.

    .venv-bench/bin/python bench/run.py [--rounds 5] [--json FILE]

Bakes the default project with the template, writes a small 32x32 ImageFolder from the
built-in shapes, then runs each round: every contender in a fresh process, in an order
shuffled anew each round (seeded by the round's number), so a busy machine slows all of them
alike and no job always follows the same one. Each ratio is formed
within a round; the table gives its median and spread over the rounds, its goal, and the
floor under which the command exits 1, so a regression shows.
"""

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parent.parent
CONTENDERS = Path(__file__).resolve().parent / "contenders.py"
CNN = ["--warmup", "10", "--steps", "50"]
# The loop contenders' timed windows: 4-5 s each (200 CNN steps of ~21 ms, 6,000 MLP steps of
# ~0.7 ms). With 1-1.5 s windows (50 and 2,000 steps, before 2026-12-07) one job's speed moved
# by 10 % from round to round, as much as the differences measured.
LOOP_CNN = ["--warmup", "10", "--steps", "200"]
MLP = ["--warmup", "100", "--steps", "6000"]
LOADER = ["--warmup", "10", "--steps", "300"]  # batches without a model: many, to be timed well
SHARED = ["--warmup", "5", "--steps", "20"]  # 2 threads beside busy work: up to 1 s a step
COUNT = ["--warmup", "200", "--steps", "1000", "--count"]  # counted, not timed
FOLDER_IMAGES_PER_CLASS = 200


@dataclass
class Measure:
    """One line of the table: a value computed from one round's results."""

    name: str
    unit: str
    goal: float
    floor: float
    higher_is_better: bool
    value: object  # function(results of one round) -> float

    def passes(self, median: float) -> bool:
        return median >= self.floor if self.higher_is_better else median <= self.floor


def samples(results: dict, job: str) -> float:
    return results[job]["samples_per_s"]


def step_us(results: dict, job: str) -> float:
    return results[job]["step_us"]


def best(results: dict, jobs: list[str]) -> float:
    return max(samples(results, job) for job in jobs)


WORKER_JOBS = [f"engine-folder-w{workers}" for workers in (0, 1, 2)]
MEASURES = [
    Measure(
        "1. loop efficiency: engine / compute floor (CNN samples/s)",
        "x",
        0.97,
        0.95,
        True,
        lambda r: samples(r, "engine-cnn") / samples(r, "floor-cnn"),
    ),
    Measure(
        "2. engine / hand-written DataLoader loop (CNN samples/s)",
        "x",
        1.0,
        1.0,
        True,
        lambda r: samples(r, "engine-cnn") / samples(r, "handloop-cnn"),
    ),
    Measure(
        "3. per-step overhead: engine - floor step (MLP 784-64-10, batch 64)",
        "us",
        100,
        200,
        False,
        lambda r: step_us(r, "engine-mlp") - step_us(r, "floor-mlp"),
    ),
    Measure(
        "3b. per-step work: Python calls of an engine step beyond the floor's (MLP)",
        "calls",
        66,
        66,
        False,
        lambda r: (
            r["count-engine-mlp"]["python_calls_per_step"]
            - r["count-floor-mlp"]["python_calls_per_step"]
        ),
    ),
    Measure(
        "3c. per-step work: torch operators of an engine step beyond the floor's (MLP)",
        "ops",
        22,
        22,
        False,
        lambda r: (
            r["count-engine-mlp"]["torch_ops_per_step"] - r["count-floor-mlp"]["torch_ops_per_step"]
        ),
    ),
    Measure(
        "4a. engine / Lightning (CNN samples/s)",
        "x",
        1.0,
        1.0,
        True,
        lambda r: samples(r, "engine-cnn") / samples(r, "lightning-cnn"),
    ),
    Measure(
        "4b. engine / Lightning (MLP samples/s)",
        "x",
        2.0,
        2.0,
        True,
        lambda r: samples(r, "engine-mlp") / samples(r, "lightning-mlp"),
    ),
    Measure(
        "4c. one-step run, process start to exit: Lightning / train.py",
        "x",
        1.0,
        1.0,
        True,
        lambda r: r["start-lightning"]["seconds"] / r["start-train"]["seconds"],
    ),
    Measure(
        "5. cold start: train.py to first step - `import torch, torchvision`",
        "s",
        1.0,
        1.0,
        False,
        lambda r: r["start-train"]["first_step_seconds"] - r["start-import"]["seconds"],
    ),
    Measure(
        "6a. data headroom, built-in data: loader / model samples/s",
        "x",
        5.0,
        5.0,
        True,
        lambda r: samples(r, "loader-cnn") / samples(r, "engine-cnn"),
    ),
    Measure(
        "6b. data headroom, 32x32 ImageFolder: loader (best workers) / model",
        "x",
        2.0,
        0.6,
        True,
        lambda r: best(r, [f"loader-folder-w{w}" for w in (0, 1, 2)]) / samples(r, "engine-cnn"),
    ),
    Measure(
        "6c. data headroom, 32x32 ImageFolder with data.cache=true: loader / model",
        "x",
        2.0,
        2.0,
        True,
        lambda r: samples(r, "loader-folder-cache") / samples(r, "engine-cnn"),
    ),
    Measure(
        "6h. data headroom, 32x32 ImageFolder as shards (data.dataset=shards): loader / model",
        "x",
        2.0,
        0.6,
        True,
        lambda r: samples(r, "loader-shards") / samples(r, "engine-cnn"),
    ),
    Measure(
        "6i. data headroom, 32x32 ImageFolder as decoded shards (--decoded 32): loader / model",
        "x",
        2.0,
        1.8,
        True,
        lambda r: samples(r, "loader-shards-decoded") / samples(r, "engine-cnn"),
    ),
    Measure(
        "6d. default data.num_workers (0) / best of 0, 1, 2 (ImageFolder training)",
        "x",
        0.95,
        # Since decoding got cheaper (2026-12-07), 2 workers train an uncached folder ~10 %
        # faster than 0 on 2 cores, while decoded shards lose 30 % with them (bench/README.md).
        0.85,
        True,
        lambda r: samples(r, "engine-folder-w0") / best(r, WORKER_JOBS),
    ),
    Measure(
        "6e. default threads / best of 1, 2 (CNN training)",
        "x",
        0.95,
        0.95,
        True,
        lambda r: samples(r, "engine-cnn") / best(r, ["engine-cnn-t1", "engine-cnn-t2"]),
    ),
    Measure(
        "6f. machine shared with busy work: automatic threads / best of 1, 2 (CNN training)",
        "x",
        0.9,
        0.8,
        True,
        lambda r: samples(r, "shared-cnn-auto") / best(r, ["shared-cnn-t1", "shared-cnn-t2"]),
    ),
    Measure(
        "6g. machine shared with busy work / idle, automatic threads (CNN samples/s)",
        "x",
        0.4,
        0.3,
        True,
        lambda r: samples(r, "shared-cnn-auto") / samples(r, "engine-cnn"),
    ),
    Measure(
        "7. default run: python train.py to 95 % validation accuracy",
        "s",
        30.0,
        30.0,
        False,
        lambda r: r["default-run"]["seconds_to_95"],
    ),
]


def jobs_for(project: Path, folder: Path, python: str) -> dict:
    """name -> function() -> result dict; each runs one fresh process."""
    contender = [python, str(CONTENDERS), str(project)]
    on_folder = ["--set", "data.dataset=imagefolder", f"data.root={folder}"]
    jobs = {
        "floor-cnn": [*contender, "floor", "cnn", *LOOP_CNN],
        "engine-cnn": [*contender, "engine", "cnn", *LOOP_CNN],
        "handloop-cnn": [*contender, "handloop", "cnn", *LOOP_CNN],
        "lightning-cnn": [*contender, "lightning", "cnn", *LOOP_CNN],
        "floor-mlp": [*contender, "floor", "mlp", *MLP],
        "engine-mlp": [*contender, "engine", "mlp", *MLP],
        "handloop-mlp": [*contender, "handloop", "mlp", *MLP],
        "lightning-mlp": [*contender, "lightning", "mlp", *MLP],
        "engine-cnn-t1": [*contender, "engine", "cnn", *LOOP_CNN, "--threads", "1"],
        "engine-cnn-t2": [*contender, "engine", "cnn", *LOOP_CNN, "--threads", "2"],
        "loader-cnn": [*contender, "loader", "cnn", *LOADER],
        "count-engine-mlp": [*contender, "engine", "mlp", *COUNT],
        "count-floor-mlp": [*contender, "floor", "mlp", *COUNT],
    }
    for workers in (0, 1, 2):  # files decoded as they are read (no cache), by `workers`
        workers_set = [*on_folder, f"data.num_workers={workers}", "data.cache=false"]
        jobs[f"loader-folder-w{workers}"] = [*contender, "loader", "cnn", *CNN, *workers_set]
        jobs[f"engine-folder-w{workers}"] = [*contender, "engine", "cnn", *CNN, *workers_set]
    # The images decoded once into memory (not timed), then cropped and flipped per batch.
    cached = [*on_folder, "data.cache=true"]
    jobs["loader-folder-cache"] = [*contender, "loader", "cnn", *LOADER, *cached]
    # The same images as tar shards (prepare_shards.py), streamed: bytes read by the process,
    # decoded, cropped and flipped by 2 workers.
    on_shards = ["--set", "data.dataset=shards", f"data.root={shards_of(folder)}"]
    jobs["loader-shards"] = [*contender, "loader", "cnn", *CNN, *on_shards, "data.num_workers=2"]
    # The same images decoded once into shards (prepare_shards.py --decoded 32), streamed and
    # cropped a batch at a time, with the automatic data.num_workers (0 on 2 cores).
    on_decoded = ["--set", "data.dataset=shards", f"data.root={decoded_shards_of(folder)}"]
    jobs["loader-shards-decoded"] = [*contender, "loader", "cnn", *CNN, *on_decoded]
    runners = {
        name: (lambda command=command: run_contender(command)) for name, command in jobs.items()
    }
    for threads, flag in (("t1", ["--threads", "1"]), ("t2", ["--threads", "2"]), ("auto", [])):
        command = [*contender, "engine", "cnn", *SHARED, *flag]
        runners[f"shared-cnn-{threads}"] = lambda command=command: beside_busy_work(command)
    lightning_start = [*contender, "lightning", "cnn", "--warmup", "0", "--steps", "1"]
    runners["start-import"] = lambda: timed([python, "-c", "import torch, torchvision"], project)
    runners["start-train"] = lambda: first_step(python, project)
    runners["start-lightning"] = lambda: timed(lightning_start, project)
    runners["default-run"] = lambda: default_run(python, project)
    return runners


def run_contender(command: list[str]) -> dict:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def beside_busy_work(command: list[str]) -> dict:
    """run_contender while other work keeps every core of this machine but one busy (one
    Python busy loop a core, started first, as another user's job would be): on the
    2-core machine, the case of a run sharing it with one busy process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(max((cores or 1) - 1, 1))
    ]
    try:
        time.sleep(1.0)  # running before the contender looks at the machine
        return run_contender(command)
    finally:
        for process in busy:
            process.kill()
            process.wait()


def timed(command: list[str], cwd: Path) -> dict:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return {"seconds": time.perf_counter() - start}


def first_step(python: str, project: Path) -> dict:
    """`python train.py train.max_steps=1`: seconds from the command to its first optimizer
    step (the moment train.py prints the line of step 1), and to the end of the process
    (after it saves a checkpoint, draws its plots and exits)."""
    command = [python, "train.py", "train.max_steps=1", "train.log_every=1"]
    command.append(f"run.dir={fresh_run_dir(project)}")
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    first = None
    for line in process.stdout:  # the log flushes each line
        if first is None and " step 1 " in line:
            first = time.perf_counter() - start
    if process.wait() != 0 or first is None:
        raise SystemExit(f"{' '.join(command)} failed or printed no line for step 1")
    return {"first_step_seconds": first, "seconds": time.perf_counter() - start}


_run_counter = iter(range(10**6))


def fresh_run_dir(project: Path) -> Path:
    return project / "runs" / f"bench-{next(_run_counter)}"


def default_run(python: str, project: Path) -> dict:
    """`python train.py` with the defaults: seconds until metrics.csv shows 95 % val acc."""
    run_dir = fresh_run_dir(project)
    start = time.perf_counter()
    process = subprocess.Popen(
        [python, "train.py", f"run.dir={run_dir}"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reached = None
    while process.poll() is None:
        if reached is None and val_accuracy_reached(run_dir / "metrics.csv", 0.95):
            reached = time.perf_counter() - start
        time.sleep(0.02)
    total = time.perf_counter() - start
    if reached is None and val_accuracy_reached(run_dir / "metrics.csv", 0.95):
        reached = total
    if process.returncode != 0:
        raise SystemExit(f"the default run failed with exit code {process.returncode}")
    return {"seconds_to_95": reached if reached is not None else float("inf"), "seconds": total}


def val_accuracy_reached(metrics: Path, target: float) -> bool:
    try:
        with metrics.open(newline="") as file:
            return any(float(row["val_acc"]) >= target for row in csv.DictReader(file))
    except (OSError, KeyError, ValueError):
        return False


def write_image_folder(project: Path, folder: Path, python: str) -> None:
    """32x32 PNGs of the built-in shapes in folder/{train,val}/<class>/, made by the project."""
    script = f"""
import sys
sys.path.insert(0, {str(project)!r})
from pathlib import Path
from PIL import Image
from {package_of(project)}.shapes import SHAPE_CLASSES, make_shapes
for split, count, seed in (("train", {FOLDER_IMAGES_PER_CLASS * 10}, 0), ("val", 200, 1)):
    images, labels = make_shapes(count, 32, seed)
    for number, (image, label) in enumerate(zip(images, labels)):
        target = Path({str(folder)!r}) / split / SHAPE_CLASSES[label]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(target / f"{{number}}.png")
"""
    subprocess.run([python, "-c", script], check=True)


def shards_of(folder: Path) -> Path:
    """Where write_shards puts the shards of the image folder `folder`."""
    return folder.with_name(f"{folder.name}-shards")


def decoded_shards_of(folder: Path) -> Path:
    """Where write_shards puts the decoded shards of the image folder `folder`."""
    return folder.with_name(f"{folder.name}-decoded")


def write_shards(project: Path, folder: Path, python: str) -> None:
    """The image folder as shards of 1,000 images, by the project's prepare_shards.py: of
    the files, and decoded for a 32 px input."""
    for out, decoded in ((shards_of(folder), []), (decoded_shards_of(folder), ["--decoded", "32"])):
        command = [python, "prepare_shards.py", str(folder), str(out), "--per-shard", "1000"]
        subprocess.run([*command, *decoded], cwd=project, check=True, capture_output=True)


def package_of(project: Path) -> str:
    return next(project.glob("*/engine.py")).parent.name


def summarise(rounds: list[dict], measures: list[Measure]) -> tuple[list[dict], bool]:
    rows, all_pass = [], True
    for measure in measures:
        values = [measure.value(results) for results in rounds]
        median = statistics.median(values)
        passes = measure.passes(median)
        all_pass &= passes
        rows.append(
            {
                "measure": measure.name,
                "unit": measure.unit,
                "goal": measure.goal,
                "floor": measure.floor,
                "median": median,
                "min": min(values),
                "max": max(values),
                "higher_is_better": measure.higher_is_better,
                "passes": passes,
                "met_goal": median >= measure.goal
                if measure.higher_is_better
                else median <= measure.goal,
            }
        )
    return rows, all_pass


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| measure | goal | median | spread (min-max) | status |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        sign = ">=" if row["higher_is_better"] else "<="
        status = "goal met" if row["met_goal"] else "below goal"
        if not row["passes"]:
            status = f"below floor {row['floor']:g}"
        lines.append(
            f"| {row['measure']} | {sign} {row['goal']:g} {row['unit']} | "
            f"{row['median']:.3g} {row['unit']} | {row['min']:.3g}-{row['max']:.3g} | {status} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the rows and raw rounds here")
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as temporary:
        project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=temporary))
        folder = Path(temporary) / "folder32"
        write_image_folder(project, folder, python)
        write_shards(project, folder, python)
        runners = jobs_for(project, folder, python)
        names = list(runners)
        rounds = []
        for round_index in range(args.rounds):
            order = random.Random(round_index).sample(names, len(names))
            results = {}
            for name in order:
                results[name] = runners[name]()
            rounds.append(results)
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    rows, all_pass = summarise(rounds, MEASURES)
    print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "rounds": rounds}, indent=1))
    return 0 if all_pass else 1


if __name__ == "__main__":
    sys.exit(main())
