"""A baked project takes the template's later changes and keeps its user's edits.

Each test makes a git repository of the template as it is (commit one), bakes a project from
it (copier copy, or cruft create for the cookiecutter path), commits the project and edits it
as a user would: the model, configs/default.yaml, a new module of their own and a feature's
module. The template then moves on by a commit that changes machinery (engine.py, README.md)
and the same user-editable files in other places, and the project is updated (copier update,
cruft update). The template's changes must arrive, the user's edits stay, no conflict marker
or .rej file be left, and the project's own tests of the touched code pass. When both changed
the same line, the update ends with the conflict shown in the file, as the baked
docs/updating.md says.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cookiecutter.main import cookiecutter

from tests.conftest import DEFAULT, SUITE_TIMEOUT_S, TEMPLATE, run_python

copier = pytest.importorskip("copier")
cruft = pytest.importorskip("cruft")

NOT_TEMPLATE = shutil.ignore_patterns(".git", ".venv*", ".ruff_cache", "__pycache__", "*.pyc")
PACKAGE = "shape_classifier"
PROJECT_TEMPLATE = Path("{{cookiecutter.project_slug}}")
TEMPLATE_PACKAGE = PROJECT_TEMPLATE / "{{cookiecutter.package_name}}"
OLD_VERSION = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))[
    "_template_version"
]
NEW_VERSION = "99.0.0"  # later than any real version
CONFLICT_MARKERS = ("<<<<<<<", ">>>>>>>")


def marker_lines(path: Path) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return sum(line.startswith(CONFLICT_MARKERS) for line in lines)


# The conflict that docs/updating.md shows as an example.
EXAMPLE = "docs/updating.md"
EXAMPLE_MARKERS = {EXAMPLE: marker_lines(TEMPLATE / PROJECT_TEMPLATE / EXAMPLE)}

# (file in the project, text the user adds at its end)
USER_EDITS = {
    f"{PACKAGE}/model.py": "\n\ndef widened(channels: int) -> int:\n    return 2 * channels\n",
    f"{PACKAGE}/amp.py": "\n# Checked with bf16 on our cluster's A100s.\n",
}
USER_FILE = f"{PACKAGE}/my_transforms.py"
USER_SETTING = ("  val_fraction: 0.2 ", "  val_fraction: 0.25")
# (file in the template, text the template puts after its first line): other places than the
# user's, in machinery and in the files the user edits.
TEMPLATE_CHANGES = {
    TEMPLATE_PACKAGE / "engine.py": "# engine: template change one\n",
    TEMPLATE_PACKAGE / "model.py": "# model: template change two\n",
    PROJECT_TEMPLATE / "README.md": "\nREADME: template change three\n",
}
# A setting the moved-on template renames everywhere, with its row in renamed_settings.py, and
# the user's experiment file that still uses the old name.
RENAMED_KEY = ("train.log_every", "train.print_every")
USER_EXPERIMENT = ("configs/experiments/mine.yaml", "train:\n  log_every: 7  # mine\n")
TEMPLATE_SETTING = (
    "seed of data generation, init, shuffling",
    "seed of data generation, initialisation, shuffling",
)


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)


@pytest.fixture
def template_repo(tmp_path) -> Path:
    """The template as it is, committed into a repository of its own."""
    repo = tmp_path / "template"
    shutil.copytree(TEMPLATE, repo, ignore=NOT_TEMPLATE)
    git(repo, "init", "-q")
    commit_all(repo, "the template today")
    return repo


def replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} is not once in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def insert_after_first_line(path: Path, addition: str) -> None:
    first, rest = path.read_text(encoding="utf-8").split("\n", 1)
    path.write_text(f"{first}\n{addition}{rest}", encoding="utf-8")


def move_template_on(repo: Path, setting: tuple[str, str] = TEMPLATE_SETTING) -> None:
    for relative, addition in TEMPLATE_CHANGES.items():
        insert_after_first_line(repo / relative, addition)
    replace_once(repo / PROJECT_TEMPLATE / "configs" / "default.yaml", *setting)
    rename_setting_everywhere(repo)
    commit_all(repo, "the template moves on")


def rename_setting_everywhere(repo: Path) -> None:
    """A later version renames train.log_every, in every file and in the renames table."""
    (old_key, new_key), old, new = RENAMED_KEY, "log_every", "print_every"
    for path in (repo / PROJECT_TEMPLATE).rglob("*"):
        if path.is_file() and path.suffix in (".py", ".yaml", ".md"):
            text = path.read_text(encoding="utf-8")
            path.write_text(text.replace(old, new), encoding="utf-8")
    replace_once(
        repo / TEMPLATE_PACKAGE / "renamed_settings.py",
        "RENAMED: tuple[tuple[str, str, str], ...] = ()",
        f"RENAMED: tuple[tuple[str, str, str], ...] = ({(NEW_VERSION, old_key, new_key)!r},)",
    )
    for name in ("cookiecutter.json", "copier.yml"):
        replace_once(
            repo / name,
            f'"_template_version": "{OLD_VERSION}"',
            f'"_template_version": "{NEW_VERSION}"',
        )


def edit_as_a_user(project: Path, setting: tuple[str, str] = USER_SETTING) -> None:
    for relative, addition in USER_EDITS.items():
        with (project / relative).open("a", encoding="utf-8") as file:
            file.write(addition)
    (project / USER_FILE).write_text('"""My own transforms."""\n', encoding="utf-8")
    (project / USER_EXPERIMENT[0]).write_text(USER_EXPERIMENT[1], encoding="utf-8")
    replace_once(project / "configs" / "default.yaml", *setting)
    commit_all(project, "my edits")


def leftovers(project: Path) -> list[str]:
    """.rej files, and files with more conflict-marker lines than the template gives them (its
    docs/updating.md shows a conflict as an example), anywhere in the project."""
    found = []
    for path in sorted(project.rglob("*")):
        if ".git" in path.parts or not path.is_file():
            continue
        relative = path.relative_to(project).as_posix()
        if path.suffix in (".rej", ".orig"):
            found.append(relative)
        elif path.suffix in (".py", ".md", ".yaml", ".toml"):
            if marker_lines(path) > EXAMPLE_MARKERS.get(relative, 0):
                found.append(relative)
    return found


def assert_both_kept(project: Path) -> None:
    for relative, addition in TEMPLATE_CHANGES.items():
        baked = project / relative.relative_to(PROJECT_TEMPLATE)
        baked = Path(str(baked).replace("{{cookiecutter.package_name}}", PACKAGE))
        assert addition in baked.read_text(encoding="utf-8"), f"{baked.name}: template change lost"
    for relative, addition in USER_EDITS.items():
        assert (project / relative).read_text(encoding="utf-8").endswith(addition), relative
    assert (project / USER_FILE).is_file()
    settings = (project / "configs" / "default.yaml").read_text(encoding="utf-8")
    assert USER_SETTING[1] in settings and TEMPLATE_SETTING[1] in settings
    assert not leftovers(project), f"conflict left behind: {leftovers(project)}"


def assert_project_tests_pass(project: Path) -> None:
    done = run_python(
        ["-m", "pytest", "tests/test_config.py", "-q", "-x", "-p", "no:cacheprovider"],
        cwd=project,
        timeout=SUITE_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def copier_project(template_repo: Path, tmp_path: Path) -> Path:
    project = tmp_path / "work" / PACKAGE
    copier.run_copy(
        str(template_repo), str(project), data=DEFAULT, defaults=True, unsafe=True, quiet=True
    )
    git(project, "init", "-q")
    commit_all(project, "baked")
    return project


def copier_update(project: Path) -> None:
    copier.run_update(
        str(project), defaults=True, unsafe=True, overwrite=True, quiet=True, conflict="inline"
    )


def cruft_project(template_repo: Path, tmp_path: Path) -> Path:
    """A plain cookiecutter bake: its post-generation hook records the template for cruft."""
    output = tmp_path / "work"
    project = Path(
        cookiecutter(
            str(template_repo), output_dir=str(output), no_input=True, extra_context=DEFAULT
        )
    )
    assert (project / ".cruft.json").is_file(), "the bake did not record its template for cruft"
    git(project, "init", "-q")
    commit_all(project, "baked")
    return project


def cruft_update(project: Path) -> bool:
    return cruft.update(project, skip_apply_ask=True, allow_untracked_files=False)


# How each tool bakes a project and updates it.
TOOLS = {"copier": (copier_project, copier_update), "cruft": (cruft_project, cruft_update)}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_an_update_brings_the_template_changes_and_keeps_the_user_edits(
    template_repo, tmp_path, tool
):
    bake, update = TOOLS[tool]
    project = bake(template_repo, tmp_path)
    edit_as_a_user(project)
    move_template_on(template_repo)
    update(project)
    assert_both_kept(project)
    assert_old_settings_file_runs(project, tool)
    assert_project_tests_pass(project)
    recorded = template_commit(project, tool)
    assert recorded and git(template_repo, "rev-parse", "HEAD").startswith(recorded)


def assert_old_settings_file_runs(project: Path, tool: str) -> None:
    """The user's experiment file, written with the old key, sets the renamed setting: copier's
    migration renamed it in the file; after cruft (no migrations) the run reads it with one
    warning."""
    experiment = (project / USER_EXPERIMENT[0]).read_text(encoding="utf-8")
    if tool == "copier":
        assert experiment == USER_EXPERIMENT[1].replace("log_every", "print_every")
    else:
        assert experiment == USER_EXPERIMENT[1]
    done = run_python(["train.py", USER_EXPERIMENT[0], "--print-config"], cwd=project)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "print_every: 7" in done.stdout and "log_every" not in done.stdout
    warnings = [line for line in done.stderr.splitlines() if "renamed" in line]
    assert len(warnings) == (0 if tool == "copier" else 1), done.stderr[-2000:]
    if warnings:
        assert "train.log_every" in warnings[0] and "train.print_every" in warnings[0]


def template_commit(project: Path, tool: str) -> str:
    if tool == "cruft":
        return json.loads((project / ".cruft.json").read_text(encoding="utf-8"))["commit"]
    # YAML: a short hash of digits only is written quoted ('7399006').
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text(encoding="utf-8"))
    return str(answers["_commit"])


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_a_line_both_changed_ends_with_the_conflict_shown(template_repo, tmp_path, tool):
    bake, update = TOOLS[tool]
    project = bake(template_repo, tmp_path)
    edit_as_a_user(project, setting=("  val_fraction: 0.2 ", "  val_fraction: 0.3 "))
    move_template_on(template_repo, setting=("  val_fraction: 0.2 ", "  val_fraction: 0.1 "))
    update(project)
    settings = project / "configs" / "default.yaml"
    assert leftovers(project) == ["configs/default.yaml"]
    text = settings.read_text(encoding="utf-8")
    assert "val_fraction: 0.3" in text and "val_fraction: 0.1" in text  # both sides shown
    steps = (project / "docs" / "updating.md").read_text(encoding="utf-8")
    assert "<<<<<<<" in steps and "git add" in steps  # how to resolve it
