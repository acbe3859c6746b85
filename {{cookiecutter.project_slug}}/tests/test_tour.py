"""docs/tour.md's worked examples work as written: each is applied to a copy of this project
(its new files written, its edits made), and one short training run there, with the settings
of every example's command at once, shows that each took effect: the new model was built, the
new dataset's classes were trained on, the training loss is the new one, the new metric is in
metrics.csv, and the hook saw every epoch."""

import csv
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, SMALL_OVERRIDES, _subprocess_env, write_images

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint

TOUR = PROJECT_ROOT / "docs" / "tour.md"
EXAMPLES = ("new-model", "new-dataset", "new-loss", "new-metric", "hooks")
# A fenced block of an example: ```LANGUAGE tour:EXAMPLE [PATH] ... ```
BLOCK = re.compile(r"^```(\w+) tour:([\w-]+)(?: (\S+))?\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# The images of the CSV dataset, per class; few and small, for a run of seconds.
CSV_IMAGES = {"cat": 16, "dog": 16}
EPOCHS = 2


@dataclass(frozen=True)
class Block:
    language: str
    example: str
    path: str | None  # the file a python block writes or a diff block edits
    text: str


@dataclass(frozen=True)
class TourRun:
    run_dir: Path
    stdout: str
    project: Path  # the copy of the project, with the examples applied
    paths: list[str]  # the files the examples write or edit, relative to it


def tour_blocks() -> list[Block]:
    text = TOUR.read_text(encoding="utf-8")
    return [Block(*match.groups()) for match in BLOCK.finditer(text)]


def apply_edit(source: str, diff: str, where: str) -> str:
    """`source` with each hunk of `diff` made: its context (` `) and removed (`-`) lines,
    found exactly once as whole lines, replaced by its context and added (`+`) lines. Hunks
    start at `@@`."""
    hunks = re.split(r"^@@.*\n", diff, flags=re.MULTILINE)
    for number, hunk in enumerate((hunk for hunk in hunks if hunk.strip()), start=1):
        old, new = [], []
        for line in hunk.splitlines():
            mark, content = line[:1], line[1:]
            assert mark in (" ", "-", "+", ""), f"{where}, hunk {number}: {line!r}"
            if mark != "+":
                old.append(content)
            if mark != "-":
                new.append(content)
        assert old, f"{where}, hunk {number}: no line to find the place by"
        # Between line breaks, so that only whole lines match.
        old_text, new_text = "\n" + "\n".join(old) + "\n", "\n" + "\n".join(new) + "\n"
        found = ("\n" + source).count(old_text)
        assert found == 1, f"{where}, hunk {number}: its lines occur {found} times:{old_text}"
        source = ("\n" + source).replace(old_text, new_text)[1:]
    return source


def command_arguments(block: Block, programs: list[str]) -> list[str]:
    """The key=value arguments of an example's command, which must run a program there is."""
    words = shlex.split(block.text, comments=True)
    assert words[:1] == ["python"] and words[1] in programs, block.text
    return words[2:]


def write_csv_dataset(root: Path) -> None:
    """root/train.csv and root/val.csv in the tour's format, listing images under root/photos."""
    paths = write_images(root / "photos", CSV_IMAGES)
    rows = [(path.relative_to(root).as_posix(), path.parent.name) for path in paths]
    val = rows[::4]
    for name, part in (("train", [row for row in rows if row not in val]), ("val", val)):
        with (root / f"{name}.csv").open("w", newline="", encoding="utf-8") as file:
            csv.writer(file).writerows([("file", "label"), *sorted(part)])


def copy_project(destination: Path) -> None:
    """What training needs of this project: train.py, its settings and the package; and
    pyproject.toml, for ruff."""
    package = load_checkpoint.__module__.split(".")[0]
    destination.mkdir(parents=True)
    for name in ("train.py", "pyproject.toml"):
        shutil.copy2(PROJECT_ROOT / name, destination / name)
    for name in ("configs", package):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(PROJECT_ROOT / name, destination / name, ignore=ignore)


def apply_examples(project: Path, blocks: list[Block]) -> None:
    """Write each example's new files into `project` and make its edits there."""
    for block in blocks:
        where = f"docs/tour.md, {block.example} ({block.language} {block.path})"
        target = project / str(block.path)
        if block.language == "python":
            assert not target.exists(), f"{where}: the file is already there"
            target.write_text(block.text, encoding="utf-8")
        elif block.language == "diff":
            edited = apply_edit(target.read_text(encoding="utf-8"), block.text, where)
            target.write_text(edited, encoding="utf-8")


@pytest.fixture(scope="module")
def tour_run(tmp_path_factory) -> TourRun:
    """A copy of the project with every example of the tour applied, trained with the
    arguments of every example's command at once, through the hooks example's script
    (which trains as train.py does)."""
    blocks = tour_blocks()
    assert sorted({block.example for block in blocks}) == sorted(EXAMPLES)
    commands = [block.example for block in blocks if block.language == "bash"]
    assert sorted(commands) == sorted(EXAMPLES), "docs/tour.md: one command per example"
    project = tmp_path_factory.mktemp("tour") / "project"
    copy_project(project)
    apply_examples(project, blocks)
    written = [block.path for block in blocks if block.language == "python"]
    programs = ["train.py", *written]
    arguments = [
        argument
        for block in blocks
        if block.language == "bash"
        for argument in command_arguments(block, programs)
    ]
    script = next(block.path for block in blocks if block.example == "hooks" and block.path)

    data, run_dir = project.parent / "labelled", project.parent / "run"
    write_csv_dataset(data)
    small = [*SMALL_OVERRIDES, f"train.epochs={EPOCHS}", "data.batch_size=8"]
    result = subprocess.run(
        [sys.executable, script, *small, *arguments, f"data.root={data}", f"run.dir={run_dir}"],
        cwd=project,
        env={**_subprocess_env(), "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    paths = sorted({str(block.path) for block in blocks if block.path})
    return TourRun(run_dir, result.stdout, project, paths)


def metrics_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_the_new_model_is_built_by_name(tour_run):
    run_dir = tour_run.run_dir
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "model: tiny_cnn, " in log
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["config"]["model"]["name"] == "tiny_cnn"
    assert any(key.startswith("features.") for key in checkpoint["model"])  # TinyCNN's layers


def test_the_new_dataset_gives_the_classes_of_its_csv_files(tour_run):
    run_dir = tour_run.run_dir
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    images = sum(CSV_IMAGES.values())
    assert f"data: csv, 2 classes, {images * 3 // 4} train / {images // 4} val samples" in log
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["classes"] == sorted(CSV_IMAGES)


def test_the_new_loss_is_what_training_minimises(tour_run):
    run_dir = tour_run.run_dir
    # The focal loss of gamma=2 scales each sample's cross-entropy by (1 - p)^2: with two
    # classes and an untrained model (p near 1/2), about a quarter of the validation loss,
    # which stays the cross-entropy. Without the edit, the two are alike.
    first = metrics_rows(run_dir)[0]
    assert float(first["train_loss"]) < 0.6 * float(first["val_loss"]), first


def test_the_new_metric_is_a_column_of_metrics_csv(tour_run):
    run_dir = tour_run.run_dir
    rows = metrics_rows(run_dir)
    assert len(rows) == EPOCHS
    for row in rows:
        worst = float(row["val_worst_class_acc"])
        assert 0 <= worst <= float(row["val_balanced_acc"]), row


def test_the_hook_sees_every_epoch(tour_run):
    stdout = tour_run.stdout
    gaps = re.findall(r"^epoch (\d+): accuracy gap [-+]\d\.\d{3}$", stdout, re.MULTILINE)
    assert gaps == [str(epoch) for epoch in range(1, EPOCHS + 1)], stdout[-2000:]


def test_the_examples_pass_the_projects_lint(tour_run):
    """The files the examples write and edit are as ruff wants them (CI runs it)."""
    pytest.importorskip("ruff", reason="ruff is not installed (pip install -e '.[dev]')")
    for command in (["check"], ["format", "--check", "--diff"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, *tour_run.paths],
            cwd=tour_run.project,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
