"""A stdout that nobody reads ends no command: with its reader gone (`... | head`), closed
(`>&-`) or full (`>/dev/full`), train.py, predict.py, evaluate.py and export.py write their
files all the same and exit 0, with nothing on stderr beyond what they say anyway: no
traceback, no "Exception ignored" at exit. (The reader-gone case of predict.py, evaluate.py
and export.py is in test_predict.py.)"""

import contextlib
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, SMALL_OVERRIDES, pipe_without_reader, write_images

from {{ cookiecutter.package_name }}.cli import DEFAULT_CONFIG
from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.train import main

# Left out of the quick subset (pytest -m "not slow"): every test here runs the entry points as
# processes with a pipe nobody reads.
pytestmark = pytest.mark.slow

# Python itself starts with sys.stdout None when descriptor 1 is closed; this closes it once
# Python has made sys.stdout, then runs the script (as a parent that closes it later would).
CLOSE_THEN_RUN = (
    "import os, runpy, sys; os.close(1); sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)
STDOUTS = ("reader gone", "closed at start", "closed after start", "full")
NOT_READ = STDOUTS[1:]  # the reader-gone case of the other commands: test_predict.py
FULL_DEVICE = Path("/dev/full")


@contextlib.contextmanager
def unread_stdout(kind: str) -> Iterator[dict]:
    """The subprocess.run arguments (stdout, preexec_fn, a prefix of the argv, environment)
    that give a child a stdout of `kind`."""
    if kind == "reader gone":
        with pipe_without_reader() as write_end:
            # Unbuffered: every line printed meets the closed pipe, the first one included.
            yield {"stdout": write_end, "env": {"PYTHONUNBUFFERED": "1"}}
    elif kind == "closed at start":
        yield {"preexec_fn": lambda: os.close(1)}
    elif kind == "closed after start":
        yield {"prefix": ["-c", CLOSE_THEN_RUN], "env": {"PYTHONUNBUFFERED": "1"}}
    else:  # buffered: what is printed meets the full device when it is flushed, at the end
        if not FULL_DEVICE.exists():
            pytest.skip("this system has no /dev/full")
        with FULL_DEVICE.open("w") as full:
            yield {"stdout": full.fileno()}


def run_unread(kind: str, env: dict, *argv: str) -> subprocess.CompletedProcess:
    """`python ARGV` in the project root with a stdout of `kind`, stderr captured."""
    with unread_stdout(kind) as how:
        result = subprocess.run(
            [sys.executable, *how.get("prefix", []), *argv],
            cwd=PROJECT_ROOT,
            env={**env, **how.get("env", {})},
            stdout=how.get("stdout"),
            stderr=subprocess.PIPE,
            preexec_fn=how.get("preexec_fn"),
            text=True,
            timeout=180,
        )
    for sign in ("Traceback", "Exception ignored", "Logging error", "error:"):
        assert sign not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(a one-epoch run folder, a folder of four new images)."""
    root = tmp_path_factory.mktemp("stdout")
    run_dir = root / "run"
    assert main(load_config([DEFAULT_CONFIG], [*SMALL_OVERRIDES, f"run.dir={run_dir}"])) == 0
    write_images(root / "new", {"a": 2, "b": 2})
    return run_dir, root / "new"


@pytest.mark.parametrize("kind", STDOUTS)
def test_training_with_a_stdout_nobody_reads_saves_and_logs_everything(
    kind, subprocess_env, tmp_path
):
    run_dir = tmp_path / "run"
    run_unread(kind, subprocess_env, "train.py", *SMALL_OVERRIDES, f"run.dir={run_dir}")
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    with (run_dir / "metrics.csv").open(newline="", encoding="utf-8") as file:
        assert [row["epoch"] for row in csv.DictReader(file)] == ["0"]
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "epoch 1/1" in log and "done in" in log
    # No console line (its time has no date) landed in the file that took descriptor 1.
    assert not re.search(r"^\d\d:\d\d:\d\d ", log, re.MULTILINE), log


@pytest.mark.parametrize("kind", NOT_READ)
def test_predict_with_a_stdout_nobody_reads_writes_its_file(
    kind, trained, subprocess_env, tmp_path
):
    run_dir, images = trained
    output = tmp_path / "predictions.csv"
    result = run_unread(kind, subprocess_env, "predict.py", str(run_dir), str(images), str(output))
    assert result.stderr.strip() == f"wrote 4 predictions to {output}"
    with output.open(newline="", encoding="utf-8") as file:
        files = sorted(
            Path(row["file"]).relative_to(images).as_posix() for row in csv.DictReader(file)
        )
    assert files == ["a/000.png", "a/001.png", "b/000.png", "b/001.png"]


@pytest.mark.parametrize("kind", NOT_READ)
def test_evaluate_with_a_stdout_nobody_reads_writes_its_files(
    kind, trained, subprocess_env, tmp_path
):
    run_dir = shutil.copytree(trained[0], tmp_path / "run", symlinks=True)  # best.pt: a link
    result = run_unread(kind, subprocess_env, "evaluate.py", str(run_dir))
    assert all(line.startswith(("INFO:", "WARNING:")) for line in result.stderr.splitlines())
    figures = json.loads((run_dir / "eval" / "best" / "metrics.json").read_text(encoding="utf-8"))
    assert figures["images"] > 0


@pytest.mark.parametrize("kind", NOT_READ)
def test_export_with_a_stdout_nobody_reads_writes_its_files(
    kind, trained, subprocess_env, tmp_path
):
    weights = tmp_path / "weights.pt"
    result = run_unread(kind, subprocess_env, "export.py", str(trained[0]), str(weights))
    assert not result.stderr
    assert weights.is_file()
    assert json.loads(weights.with_name("weights.pt.json").read_text(encoding="utf-8"))
