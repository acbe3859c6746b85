"""copier bakes the same projects as cookiecutter, from the same template.

copier.yml must ask cookiecutter.json's questions with the same defaults, choices and help
texts, and a copier bake of each combination of answers must equal the cookiecutter bake file
by file (copier's answers file aside). Bakes run in-process with copier's API, from a copy of
the template without its git history (copier then renders the folder as it is, no clone).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jinja2
import pytest
import yaml

from hooks.post_gen_project import COPIER_ANSWERS_FILE, CRUFT_FILE, files_to_remove
from tests.conftest import COMBINATIONS, TEMPLATE, combination_id

copier = pytest.importorskip("copier")

QUESTIONS = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
COPIER = yaml.safe_load((TEMPLATE / "copier.yml").read_text(encoding="utf-8"))
# Left out of the copy copier bakes from: build leftovers that neither tool bakes from git.
NOT_TEMPLATE = shutil.ignore_patterns(".git", ".venv*", ".ruff_cache", "__pycache__", "*.pyc")


def asked(questions: dict) -> list[str]:
    return [name for name in questions if not name.startswith("_")]


def test_copier_asks_the_questions_of_cookiecutter_json_in_order():
    copier_questions = [name for name, spec in COPIER.items() if not name.startswith("_")]
    assert copier_questions[:-1] == asked(QUESTIONS)
    assert copier_questions[-1] == "cookiecutter"  # the computed context, never asked
    assert COPIER["cookiecutter"]["when"] is False


@pytest.mark.parametrize("name", asked(QUESTIONS))
def test_each_question_has_cookiecutter_json_default_choices_and_help(name):
    value, spec = QUESTIONS[name], COPIER[name]
    prompt = QUESTIONS["__prompts__"][name]
    if isinstance(value, list):  # a choice: the first is the default, each with its label
        assert spec["choices"] == {prompt[choice]: choice for choice in value}
        assert spec["default"] == value[0]
        assert spec["help"] == prompt["__prompt__"]
        return
    assert spec["help"] == prompt
    assert spec["type"] == ("bool" if isinstance(value, bool) else "str")
    if "{{" not in str(value):  # computed defaults are compared through the bakes
        assert spec["default"] == value


def test_the_computed_context_carries_cookiecutter_json_private_values():
    context = COPIER["cookiecutter"]["default"]
    assert f'"_template_version": "{QUESTIONS["_template_version"]}"' in context
    assert '"__year"' in context
    for name in asked(QUESTIONS):
        assert f'"{name}": {name}' in context, f"{name} is not passed on as cookiecutter.{name}"


def test_copier_renders_with_cookiecutter_json_jinja_settings():
    for setting, value in QUESTIONS["_jinja2_env_vars"].items():
        assert COPIER["_envops"][setting] == value
    assert COPIER["_envops"]["keep_trailing_newline"] is True  # as cookiecutter does


def excluded_by_copier(answers: dict) -> set[str]:
    """The project paths copier.yml's `_exclude` leaves out for these answers."""
    environment = jinja2.Environment(
        **{**QUESTIONS["_jinja2_env_vars"], "undefined": jinja2.StrictUndefined}
    )
    paths = set()
    for pattern in COPIER["_exclude"]:
        for line in environment.from_string(pattern).render(**answers).splitlines():
            if line.strip().startswith("/"):
                paths.add(line.strip().removeprefix("/"))
    return paths


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_copier_leaves_out_the_files_the_cookiecutter_hook_deletes(combination):
    answers = {**combination, "package_name": "pkg"}
    assert excluded_by_copier(answers) == set(files_to_remove(answers))


@pytest.fixture(scope="session")
def template_copy(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("copier-template") / "template"
    shutil.copytree(TEMPLATE, copy, ignore=NOT_TEMPLATE)
    return copy


def copier_bake(template: Path, destination: Path, answers: dict) -> Path:
    copier.run_copy(
        str(template), str(destination), data=answers, defaults=True, unsafe=True, quiet=True
    )
    return destination


# What running the linter or Python in the shared cookiecutter bake leaves there.
NOT_BAKED = {".ruff_cache", "__pycache__"}


def tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not NOT_BAKED & set(path.parts)
    }


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_a_copier_bake_equals_the_cookiecutter_bake(baked, template_copy, tmp_path, combination):
    cookiecutter_bake = baked(combination)
    assert cookiecutter_bake.exit_code == 0, cookiecutter_bake.exception
    project = copier_bake(template_copy, tmp_path / "shape_classifier", combination)
    copier_files, cookiecutter_files = tree(project), tree(cookiecutter_bake.project_path)
    answers = yaml.safe_load(copier_files.pop(COPIER_ANSWERS_FILE))
    cookiecutter_files.pop(CRUFT_FILE, None)  # cruft's record, where the template is a checkout
    assert {key: answers[key] for key in combination} == combination
    assert sorted(copier_files) == sorted(cookiecutter_files)
    differing = [name for name in copier_files if copier_files[name] != cookiecutter_files[name]]
    assert not differing, f"copier and cookiecutter baked these differently: {differing}"


@pytest.mark.parametrize(
    ("answer", "value", "word"),
    [("package_name", "torch", "shadow"), ("project_slug", "logging", "standard-library")],
)
def test_copier_refuses_the_names_cookiecutter_refuses(
    template_copy, tmp_path, capfd, answer, value, word
):
    destination = tmp_path / "project"
    with pytest.raises(copier.errors.TaskError):  # the name check's exit status 1
        copier_bake(template_copy, destination, {answer: value})
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and word in errors[0] and value in errors[0], errors
    assert not destination.exists(), "copier left the refused project behind"


def test_copier_asks_again_for_a_name_that_is_no_identifier(template_copy, tmp_path):
    with pytest.raises(ValueError, match="not a lowercase Python identifier"):
        copier_bake(template_copy, tmp_path / "project", {"package_name": "my-package"})


def test_copier_into_a_folder_leaves_the_users_files_at_disabled_features_paths(
    template_copy, tmp_path
):
    destination = tmp_path / "existing"
    destination.mkdir()
    (destination / ".pre-commit-config.yaml").write_text("repos: []  # mine\n")
    (destination / "sweep.py").write_text("# my own sweep\n")
    copier_bake(template_copy, destination, {"ci": "none", "use_sweeps": False})
    assert (destination / ".pre-commit-config.yaml").read_text() == "repos: []  # mine\n"
    assert (destination / "sweep.py").read_text() == "# my own sweep\n"
    assert not (destination / ".github").exists()
