"""Every combination of the feature prompts bakes, lints clean and trains.

For each of the 64 combinations, and the defaults with each of the trackers outside the
matrix (mlflow, wandb): the bake succeeds with the asked-for answers (cookiecutter silently
drops a misspelt extra_context key, so the context is checked), no Jinja is left in any
file, and `ruff check` and `ruff format --check` pass with the baked pyproject.toml.
`ci` and `use_sweeps` leave the training code untouched (proved here for every combination),
so the 16 combinations of the other answers train: a one-step smoke train writes `last.pt`,
and a one-epoch run writes the whole run folder. The other trackers run their own tests.
"""

import csv
import fnmatch
import json
import shutil
import subprocess
import sys

import pytest
import torch

from hooks.post_gen_project import COPIER_ANSWERS_FILE, CRUFT_FILE, FEATURE_FILES
from tests.conftest import (
    ALL_FEATURES,
    COMBINATIONS,
    DEFAULT,
    FEATURES,
    SMOKE_TIMEOUT_S,
    SUITE_TIMEOUT_S,
    TEMPLATE,
    TRAIN_COMBINATIONS,
    TRAINING_NEUTRAL,
    combination_id,
    run_python,
    subprocess_env,
)

# Opening markers only: a closing `}}` is ordinary Python (a dict inside a dict display).
JINJA_MARKERS = ("{{", "{%", "{#")
SMALL_RUN = [
    "data.train_size=256",
    "data.val_size=64",
    "data.batch_size=64",
    "train.epochs=1",
]

# The trackers beyond csv and tensorboard change only their own module, test file, dependency
# and README lines: each is baked, linted and trained once, with the other answers at their
# defaults, instead of doubling the matrix. Their own tests train, kill and resume them.
MORE_TRACKERS = [{**DEFAULT, "tracker": tracker} for tracker in ("mlflow", "wandb")]
combinations = pytest.mark.parametrize(
    "combination", COMBINATIONS + MORE_TRACKERS, ids=combination_id
)
train_combinations = pytest.mark.parametrize("combination", TRAIN_COMBINATIONS, ids=combination_id)
PROJECT_TEMPLATE = TEMPLATE / "{{cookiecutter.project_slug}}"
# Files that cookiecutter copies as they are (pictures, a stray ruff cache): no templates.
COPIED_AS_IS = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))[
    "_copy_without_render"
]
# Files besides the feature's own that an answer may change: docs (the README's links and
# tests section, the project layout, the entry points that give one-line errors, the threat
# model's row for a sweep's study) and, for sweeps, the Optuna dependency.
NEUTRAL_CHANGES = {
    "ci": {"README.md", "docs/architecture.md", "docs/layout.md"},
    "use_sweeps": {
        "README.md",
        "docs/architecture.md",
        "docs/errors.md",
        "docs/layout.md",
        "docs/security.md",
        "pyproject.toml",
    },
}


def owned_files(combination: dict, package: str) -> tuple[set[str], set[str]]:
    """The files of the feature table that this combination keeps, and those it drops."""
    kept, dropped = set(), set()
    for answers, files in FEATURE_FILES:
        on = all(combination[key] == value for key, value in answers.items())
        (kept if on else dropped).update(name.replace("{package}", package) for name in files)
    return kept, dropped


def template_files(package: str) -> set[str]:
    """Every file of the project template, named as a bake with this package names it."""
    return {
        path.relative_to(PROJECT_TEMPLATE)
        .as_posix()
        .replace("{{cookiecutter.package_name}}", package)
        for path in PROJECT_TEMPLATE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def project_of(baked, combination):
    result = baked(combination)
    assert result.exit_code == 0, f"bake failed: {result.exception}"
    return result.project_path


@combinations
def test_bake_uses_the_answers_given(baked, combination):
    result = baked(combination)
    assert result.exit_code == 0, f"bake failed: {result.exception}"
    for key, value in combination.items():
        assert result.context[key] == value, f"{key} was not applied"
    package = result.context["package_name"]
    kept, dropped = owned_files(combination, package)
    for name in kept:
        assert (result.project_path / name).is_file(), f"{name} is missing"
    for name in dropped:
        assert not (result.project_path / name).exists(), f"{name} was not deleted"
    # copier's answers file is copier's alone: a cookiecutter bake drops it.
    assert not (result.project_path / COPIER_ANSWERS_FILE).exists()
    unowned = template_files(package) - kept - dropped - {COPIER_ANSWERS_FILE}
    assert f"{package}/train.py" in unowned
    missing = sorted(name for name in unowned if not (result.project_path / name).is_file())
    assert not missing, f"files that no feature owns are missing: {missing}"


@combinations
def test_no_template_syntax_left(baked, combination):
    project = project_of(baked, combination)
    leftovers = []
    for path in project.rglob("*"):
        name = path.relative_to(project).as_posix()
        if path.is_file() and not any(fnmatch.fnmatch(name, p) for p in COPIED_AS_IS):
            text = path.read_text(encoding="utf-8")
            # `${{ ... }}` is a GitHub Actions expression, meant to survive rendering.
            code = text.replace("${{", "")
            leftovers += [f"{path.name}: {m}" for m in JINJA_MARKERS if m in code]
            if "\n\n\n\n" in text:
                leftovers.append(f"{path.name}: three blank lines in a row")
    assert not leftovers


@combinations
def test_ruff_check_and_format_are_clean(baked, combination):
    project = project_of(baked, combination)
    for command in (["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command],
            cwd=project,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"ruff {command[0]}:\n{result.stdout}{result.stderr}"


def project_files(project) -> dict[str, bytes]:
    """The project's files and their bytes, but for cruft's record of the answers themselves."""
    return {
        path.relative_to(project).as_posix(): path.read_bytes()
        for path in project.rglob("*")
        if path.is_file() and path.name != CRUFT_FILE
    }


@train_combinations
@pytest.mark.parametrize("answer", sorted(TRAINING_NEUTRAL))
def test_training_neutral_answers_change_no_training_code(baked, combination, answer):
    """What lets the training tests skip the combinations of `ci` and `use_sweeps`: the other
    answer adds or removes only the files that the hook's feature table gives that feature,
    and changes no other file but docs (and, for sweeps, the Optuna dependency)."""
    package = baked(combination).context["package_name"]
    base = project_files(project_of(baked, combination))
    other_answer = next(value for value in FEATURES[answer] if value != combination[answer])
    flipped = {**combination, answer: other_answer}
    other = project_files(project_of(baked, flipped))
    base_kept, _ = owned_files(combination, package)
    other_kept, _ = owned_files(flipped, package)
    assert set(other) - set(base) == other_kept - base_kept
    assert set(base) - set(other) == base_kept - other_kept
    assert set(other) ^ set(base), f"{answer}={other_answer} changed no file"
    changed = {name for name in set(base) & set(other) if base[name] != other[name]}
    assert changed <= NEUTRAL_CHANGES[answer], changed
    if answer == "ci":
        assert not any(name.endswith(".py") for name in set(base) ^ set(other))


@train_combinations
def test_one_step_smoke_train_writes_last_checkpoint(baked, combination, tmp_path):
    project = project_of(baked, combination)
    run_dir = tmp_path / "smoke"
    result = run_python(["train.py", "train.max_steps=1", f"run.dir={run_dir}"], cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["progress"]["global_step"] == 1
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "train.log").read_text().strip()
    if combination["use_safetensors"]:
        assert (run_dir / "checkpoints" / "step-00000001.safetensors").is_file()
        assert checkpoint["model"] is None  # the weights live in the .safetensors file
    else:
        assert isinstance(checkpoint["model"], dict) and checkpoint["model"]


@train_combinations
def test_one_epoch_writes_the_run_folder(baked, combination, tmp_path):
    project = project_of(baked, combination)
    run_dir = tmp_path / "epoch"
    result = run_python(["train.py", *SMALL_RUN, f"run.dir={run_dir}"], cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    with (run_dir / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1
    for column in ("epoch", "train_loss", "val_loss", "val_acc", "lr"):
        assert rows[0][column] != "", column
    assert 0.0 <= float(rows[0]["val_acc"]) <= 1.0
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    has_events = any((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert has_events == (combination["tracker"] == "tensorboard")


DDP_COMBINATIONS = [c for c in TRAIN_COMBINATIONS if c["use_ddp"]]


@pytest.mark.parametrize("combination", DDP_COMBINATIONS, ids=combination_id)
def test_torchrun_two_processes(baked, combination, tmp_path):
    project = project_of(baked, combination)
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "train.py",
        *SMALL_RUN,
        f"run.dir={run_dir}",
    ]
    result = subprocess.run(
        command,
        cwd=project,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "world size 2" in result.stdout
    with (run_dir / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1  # one row per epoch, written by rank 0 only
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_bad_config_gives_one_line_and_exit_2(baked, tmp_path):
    project = project_of(baked, TRAIN_COMBINATIONS[0])
    run_dir = tmp_path / "never"
    cases = {
        "optim.lrr=0.1": "optim.lrr",
        "data.batch_size=many": "data.batch_size",
        "optim.name=rmsprop": "optim.name",
        "optim.lr=0": "optim.lr",
    }
    for override, key in cases.items():
        result = run_python(["train.py", override, f"run.dir={run_dir}"], cwd=project)
        assert result.returncode == 2, (override, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0], lines
        assert not run_dir.exists()


@pytest.mark.parametrize("combination", MORE_TRACKERS, ids=combination_id)
def test_other_trackers_pass_their_own_tests(baked, combination, tmp_path):
    """tests/test_<tracker>.py of the bake: a run, a SIGKILL and resume, an unreachable store."""
    project = shutil.copytree(project_of(baked, combination), tmp_path / "project")
    own_tests = f"tests/test_{combination['tracker']}.py"
    command = ["-m", "pytest", "-q", "-p", "no:cacheprovider", own_tests]
    result = run_python(command, cwd=project, timeout=SUITE_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout


# Tests of code that no prompt changes, and that no prompt's files take part in: the
# config's properties, the data (building, decoding, the input-size choice), the CSV
# readers, the log, models (built, pretrained), the recipe's choices, the learning-rate
# range test, the quick start and the tour's examples (whose training and saving the other
# tests cover in every bake). The default bake runs them; the all-features bake need not run
# them again (it keeps every test of saving, resuming, exporting, predicting and training,
# where safetensors, DDP and trackers take part).
FEATURE_FREE_TESTS = (
    "test_config_properties.py",
    "test_data_properties.py",
    "test_data.py",
    "test_image_files.py",
    "test_input_size.py",
    "test_csv_files.py",
    "test_disk_cache.py",
    "test_fuzz_inputs.py",
    "test_renamed_settings.py",
    "test_shards.py",
    "test_decoded_shards.py",
    "test_log.py",
    "test_pretrained.py",
    "test_lr_find.py",
    "test_model.py",
    "test_recipe.py",
    "test_quick_start.py",
    "test_tour.py",
)


@pytest.mark.parametrize("combination", [DEFAULT, ALL_FEATURES], ids=["default", "all-features"])
def test_baked_project_own_test_suite_passes(baked, combination, tmp_path):
    project = shutil.copytree(project_of(baked, combination), tmp_path / "project")
    command = ["-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if combination == ALL_FEATURES:
        missing = [name for name in FEATURE_FREE_TESTS if not (project / "tests" / name).is_file()]
        assert not missing, f"FEATURE_FREE_TESTS names files the project lacks: {missing}"
        command += [f"--ignore=tests/{name}" for name in FEATURE_FREE_TESTS]
    result = run_python(command, cwd=project, timeout=SUITE_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
