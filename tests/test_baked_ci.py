"""The baked project's own CI (ci=github): a valid GitHub Actions workflow and pre-commit config."""

import subprocess
import tomllib

import pytest
import yaml

from tests.conftest import ALL_FEATURES, DEFAULT


@pytest.fixture(scope="module", params=[DEFAULT, ALL_FEATURES], ids=["default", "all-features"])
def project(request, baked):
    result = baked(request.param)
    assert result.exit_code == 0, f"bake failed: {result.exception}"
    assert result.context["ci"] == "github"
    return result.project_path


def ruff_pin(project) -> str:
    """The `ruff==X` of the baked pyproject's dev extra."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    (pin,) = [pin for pin in pyproject["project"]["optional-dependencies"]["dev"] if "ruff" in pin]
    return pin


def steps_text(job: dict) -> str:
    return "\n".join(str(step.get("run", "")) + str(step.get("uses", "")) for step in job["steps"])


def test_workflow_is_valid_yaml_with_lint_and_test_jobs(project):
    text = (project / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8")
    workflow = yaml.safe_load(text)
    # YAML 1.1 (PyYAML) reads the key `on` as the boolean True.
    triggers = workflow.get("on", workflow.get(True))
    assert set(triggers) == {"push", "pull_request"}
    assert set(workflow["jobs"]) == {"lint", "test", "template"}

    lint = steps_text(workflow["jobs"]["lint"])
    assert f"pip install {ruff_pin(project)}" in lint  # the version pyproject.toml pins
    assert "ruff check" in lint and "ruff format --check ." in lint
    test = workflow["jobs"]["test"]
    commands = steps_text(test)
    assert "--index-url https://download.pytorch.org/whl/cpu" in commands  # CPU torch
    assert 'pip install -e ".[dev]"' in commands and "python -m pytest" in commands
    # The Actions expressions came through Jinja rendering intact.
    assert "${{ matrix.python-version }}" in text
    assert "${{ github.workflow }}-${{ github.ref }}" in text
    assert test["strategy"]["matrix"]["python-version"]


def test_the_template_job_reports_a_newer_template_and_never_fails_the_run(project):
    workflow = yaml.safe_load(
        (project / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8")
    )
    job = workflow["jobs"]["template"]
    assert job["continue-on-error"] is True
    commands = steps_text(job)
    assert "copier check-update --quiet ." in commands  # exit 2: a newer version exists
    assert "cruft check" in commands
    assert commands.count("::warning::") >= 2 and "docs/updating.md" in commands
    # Its shell script parses, so a runner reaches the checks.
    script = next(step["run"] for step in job["steps"] if "cruft check" in step.get("run", ""))
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0


def test_pre_commit_runs_the_pinned_ruff(project):
    config = yaml.safe_load((project / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    (repo,) = config["repos"]
    assert repo["repo"].endswith("/astral-sh/ruff-pre-commit")
    assert [hook["id"] for hook in repo["hooks"]] == ["ruff-check", "ruff-format"]
    assert ruff_pin(project) == f"ruff=={repo['rev'].removeprefix('v')}"
