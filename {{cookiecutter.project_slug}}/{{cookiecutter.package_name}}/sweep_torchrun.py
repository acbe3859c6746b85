"""Sweep trials as torchrun jobs: `python sweep.py --nproc-per-node N` trains each trial with
N processes under DistributedDataParallel.

Only projects with both sweeps and DDP have this module. sweep.py finds it through
features.feature_module and takes from it the option, its lines of the help text, the advice
for a sweep started under torchrun, and the trial runner; without it, every trial trains in
the sweep's own process.
"""

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cli import DEFAULT_CONFIG
from .log import read_csv
from .stopping import active_stop

TRAIN_SCRIPT = DEFAULT_CONFIG.parent.parent / "train.py"
# The option this module adds to sweep.py's command line, and what its value is.
OPTION = "--nproc-per-node"
OPTIONS = {OPTION: "N"}
USAGE_LINES = """\
  --nproc-per-node N   run each trial as one torchrun job of N processes (default 1: each
                       trial trains in this process)
"""
# What to run instead when sweep.py itself is started under torchrun.
UNDER_TORCHRUN_HINT = "for trials of N processes each, run python sweep.py --nproc-per-node N"


@dataclass(frozen=True)
class TorchrunTrial:
    """Trains one trial as one torchrun job of `processes` processes (a trial runner of
    sweep.py, which picks it for --nproc-per-node N with N > 1)."""

    processes: int

    def __call__(
        self,
        train_files: list[Path],
        overrides: list[str],
        run_dir: Path,
        report: Callable[[dict], bool],
    ) -> int:
        """Start the job; returns its exit code.

        The trial's metrics.csv in `run_dir` is read as it grows, and each new row goes to
        `report`; when that asks to stop, the job gets SIGTERM, on which every rank finishes
        its step, saves and exits.
        """
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={self.processes}",
            str(TRAIN_SCRIPT),
            *map(str, train_files),
            *overrides,
        ]
        job = subprocess.Popen(command)
        reported, stopping = 0, False
        try:
            while True:
                ended = job.poll() is not None
                stop = active_stop()  # the sweep's: a Ctrl-C or SIGTERM sent to it alone
                if stop is not None and stop.received is not None and not stopping and not ended:
                    job.send_signal(stop.received)  # every rank finishes its step and saves
                    stopping = True
                rows = read_csv(run_dir / "metrics.csv")
                for row in rows[reported:]:
                    if report(row) and not stopping and job.poll() is None:
                        job.send_signal(signal.SIGTERM)
                        stopping = True
                reported = len(rows)
                if ended:
                    return job.returncode
                time.sleep(0.5)
        except KeyboardInterrupt:  # Ctrl-C reached the job too: let its ranks save
            job.wait()
            return 130
