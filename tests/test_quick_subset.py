"""The baked project's quick subset, `pytest -m "not slow"`: the marker is registered, and the
subset is a real part of the suite that still reaches every stage a newcomer touches first.

Collection only: what the subset costs is measured, never asserted (a busy machine would
fail a timing assertion by load alone).
"""

import re
import shutil

import pytest

from tests.conftest import ALL_FEATURES, DEFAULT, run_python

# One test at least from each: the config, the data, the model, a training step, a checkpoint
# saved and loaded again. Predict is asked of the test names (see below).
STAGES = (
    "tests/test_config.py",
    "tests/test_data.py",
    "tests/test_model.py",
    "tests/test_train.py",
    "tests/test_checkpoint.py",
)
# Files of kills, stopped processes and fuzzing: none of their tests belongs in the subset.
SLOW_FILES = (
    "tests/test_resume.py",
    "tests/test_stdout.py",
    "tests/test_fuzz_inputs.py",
    "tests/test_fuzz_files.py",
)
COLLECTED = re.compile(r"^(\d+)/(\d+) tests collected \((\d+) deselected\)", re.MULTILINE)


def quick_subset(project) -> tuple[list[str], int]:
    """(the node ids of `pytest -m "not slow"`, the number of tests in the whole suite)."""
    command = ["-m", "pytest", "-m", "not slow", "--collect-only", "-q", "-p", "no:cacheprovider"]
    result = run_python([*command, "--strict-markers"], cwd=project)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    counts = COLLECTED.search(result.stdout)
    assert counts, result.stdout[-2000:]
    selected, total, deselected = map(int, counts.groups())
    nodes = [line for line in result.stdout.splitlines() if "::" in line]
    assert len(nodes) == selected and selected + deselected == total, result.stdout[-2000:]
    return nodes, total


@pytest.mark.parametrize("combination", [DEFAULT, ALL_FEATURES], ids=["default", "all-features"])
def test_the_quick_subset_is_a_part_of_the_suite_that_reaches_every_stage(
    baked, combination, tmp_path
):
    result = baked(combination)
    assert result.exit_code == 0, f"bake failed: {result.exception}"
    # A copy: collecting writes bytecode, and other tests compare the baked files.
    project = shutil.copytree(result.project_path, tmp_path / "project")
    markers = run_python(["-m", "pytest", "--markers", "-p", "no:cacheprovider"], cwd=project)
    assert "@pytest.mark.slow:" in markers.stdout, markers.stdout[-2000:]

    nodes, total = quick_subset(project)
    assert 0 < len(nodes) < total
    files = {node.split("::", 1)[0] for node in nodes}
    missing = [name for name in STAGES if name not in files]
    assert not missing, f"the quick subset has no test of {missing}"
    predict = [node for node in nodes if "predict" in node.split("::", 1)[1]]
    assert predict, "the quick subset has no test of predict.py"
    slow = sorted(files.intersection(SLOW_FILES))
    assert not slow, f"the quick subset runs tests of {slow}"
