"""Shared fixtures: bake a project once per prompt combination and reuse it."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parent.parent
FEATURES = {
    "use_amp": [True, False],
    "use_ddp": [True, False],
    "use_safetensors": [True, False],
    "tracker": ["csv", "tensorboard"],
    "use_sweeps": [True, False],
    "ci": ["github", "none"],
}
COMBINATIONS = [
    dict(zip(FEATURES, values, strict=True)) for values in itertools.product(*FEATURES.values())
]
# Answers that change none of the Python files that training runs: `ci` adds only a workflow
# and a pre-commit config, `use_sweeps` adds sweep.py, its modules, search space and tests
# (the files of hooks/post_gen_project.py's FEATURE_FILES).
# test_bake_matrix proves it for every combination, so the training tests cover the other
# answers' combinations once, with these at their defaults (16 instead of 64 smoke trains).
TRAINING_NEUTRAL = {"use_sweeps": False, "ci": "github"}
TRAIN_COMBINATIONS = [
    combination
    for combination in COMBINATIONS
    if all(combination[key] == value for key, value in TRAINING_NEUTRAL.items())
]
DEFAULT = {
    "use_amp": True,
    "use_ddp": False,
    "use_safetensors": False,
    "tracker": "csv",
    "use_sweeps": False,
    "ci": "github",
}
ALL_FEATURES = {
    "use_amp": True,
    "use_ddp": True,
    "use_safetensors": True,
    "tracker": "tensorboard",
    "use_sweeps": True,
    "ci": "github",
}


def combination_id(combination: dict) -> str:
    parts = [name.removeprefix("use_") for name in FEATURES if combination[name] is True]
    return "-".join(parts + [combination["tracker"], f"ci_{combination['ci']}"])


# Subprocess timeouts guard against a hang, never against slowness: each is several times
# what its command takes on the 2-core machine with two busy processes beside the whole
# suite (bench/loaded_tests.sh), so a busy machine cannot fail a test by time alone.
SMOKE_TIMEOUT_S = 600  # one bake, lint or short training run
SUITE_TIMEOUT_S = 3600  # a baked project's own test suite (about 10 minutes alone)


def subprocess_env() -> dict:
    # One thread per process: the tests already run two workers on two cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_python(
    args: list[str], cwd: Path, timeout: int = SMOKE_TIMEOUT_S
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def baked(cookies_session):
    """bake(combination) -> the pytest-cookies result; each combination is baked once."""
    results = {}

    def bake(combination: dict):
        key = tuple(sorted(combination.items()))
        if key not in results:
            results[key] = cookies_session.bake(
                extra_context=dict(combination), template=str(TEMPLATE)
            )
        return results[key]

    return bake


# The baked projects' own suites take minutes each, far longer than any other test: they go
# first, one to each xdist worker, and the other tests fill in around them, instead of one
# of them starting late and running on alone at the end.
LONGEST_FIRST = frozenset({"test_baked_project_own_test_suite_passes"})


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: getattr(item, "originalname", item.name) not in LONGEST_FIRST)


def pytest_sessionfinish(session, exitstatus):
    """A run in which no test passed is a failure, even if everything was skipped."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or hasattr(session.config, "workerinput"):
        return
    if exitstatus == 0 and not reporter.stats.get("passed"):
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
