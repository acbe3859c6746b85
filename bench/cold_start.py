"""Cold start: `python train.py` to its first optimizer step vs a bare `import torch, torchvision`.

Bakes the default project into a temporary folder, then runs both commands in alternation
(rounds interleaved, so a busy machine slows both alike) and reports the median extra time
of train.py. The train.py run stops after one optimizer step (train.max_steps=1), so its
time also holds the first step itself, one checkpoint save and interpreter shutdown: the
figure is an upper bound of the time to the first step.

    python bench/cold_start.py [--rounds 7] [--limit 1.0]

Exits 1 when the median extra time is above --limit seconds.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parent.parent


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--limit", type=float, default=1.0, help="seconds allowed over imports")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=folder))
        imports = [sys.executable, "-c", "import torch, torchvision"]
        train = [sys.executable, "train.py", "train.max_steps=1", "train.log_every=1"]
        timed(imports, project)  # warm the file cache once for both
        import_times, train_times = [], []
        for round_index in range(args.rounds):
            import_times.append(timed(imports, project))
            train_times.append(timed([*train, f"run.dir=runs/r{round_index}"], project))
    extra = [t - i for t, i in zip(train_times, import_times, strict=True)]
    print(f"import torch, torchvision : median {statistics.median(import_times):.2f} s")
    print(f"train.py to first step    : median {statistics.median(train_times):.2f} s")
    print(
        f"extra time of train.py    : median {statistics.median(extra):.2f} s "
        f"(min {min(extra):.2f}, max {max(extra):.2f}, {args.rounds} interleaved rounds)"
    )
    return 0 if statistics.median(extra) <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
