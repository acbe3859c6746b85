"""The template's version is in one place and the CHANGELOG keeps up with it: the version is
`_template_version` in cookiecutter.json (never asked), the CHANGELOG's newest section is that
version, every section is a dated version, newest first, and a baked project records the
version it was made from in its pyproject.toml and names it in docs/updating.md. Plain
reading and one default bake."""

import datetime
import json
import re
import tomllib

from tests.conftest import DEFAULT, TEMPLATE
from tests.test_docs_links import broken_links

CHANGELOG = TEMPLATE / "CHANGELOG.md"
QUESTIONS = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
SEMANTIC_VERSION = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
VERSION_HEADING = re.compile(r"^## (?P<version>\S+) - (?P<date>\S+)$")
KINDS = ("Changed", "Added", "Fixed")


def template_version() -> str:
    return QUESTIONS["_template_version"]


def sections(text: str) -> list[tuple[str, str, str]]:
    """(heading, version, date) of every `## ` section of the CHANGELOG, in the file's order;
    version and date are empty where the heading is not `## VERSION - DATE`."""
    found = []
    for heading in re.findall(r"^## .*$", text, re.M):
        match = VERSION_HEADING.match(heading)
        found.append((heading, *(match.group("version", "date") if match else ("", ""))))
    return found


def subsections(text: str) -> dict[str, list[str]]:
    """The `### ` headings under each version's `## ` heading."""
    found, current = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line
            found[current] = []
        elif line.startswith("### ") and current is not None:
            found[current].append(line.removeprefix("### ").strip())
    return found


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_the_template_version_is_a_private_semantic_version():
    version = template_version()
    assert isinstance(version, str) and SEMANTIC_VERSION.match(version), version
    # A leading underscore: cookiecutter renders the key but never asks it.
    assert "_template_version" not in QUESTIONS.get("__prompts__", {})


def test_every_section_is_a_dated_version_newest_first():
    found = sections(CHANGELOG.read_text(encoding="utf-8"))
    assert found, "CHANGELOG.md has no `## VERSION - DATE` section"
    for heading, version, date in found:
        assert SEMANTIC_VERSION.match(version), f"{heading!r}: not `## X.Y.Z - YYYY-MM-DD`"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date), f"{heading!r}: date not YYYY-MM-DD"
        datetime.date.fromisoformat(date)  # a real day: 2026-02-30 raises
    versions = [version_key(version) for _, version, _ in found]
    dates = [date for _, _, date in found]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)
    assert dates == sorted(dates, reverse=True), "sections are not newest first by date"


def test_the_newest_section_is_the_template_version():
    _, newest, _ = sections(CHANGELOG.read_text(encoding="utf-8"))[0]
    assert newest == template_version(), (
        f"CHANGELOG.md's newest section is {newest}, cookiecutter.json's _template_version is "
        f"{template_version()}: give the new version a section, or the section its version"
    )


def test_each_version_sorts_its_changes_by_kind():
    for heading, kinds in subsections(CHANGELOG.read_text(encoding="utf-8")).items():
        assert kinds, f"{heading!r} has no Changed, Added or Fixed subsection"
        assert set(kinds) <= set(KINDS), f"{heading!r}: {kinds} beyond {KINDS}"
        assert kinds == sorted(kinds, key=KINDS.index), f"{heading!r}: not in {KINDS} order"


def test_the_changelog_links_lead_somewhere():
    assert broken_links(CHANGELOG) == []


def test_the_template_readme_links_the_changelog():
    assert "(CHANGELOG.md)" in (TEMPLATE / "README.md").read_text(encoding="utf-8")


def test_a_bake_records_the_template_version(baked):
    result = baked(DEFAULT)
    assert result.exit_code == 0, f"bake failed: {result.exception}"
    project = result.project_path
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["tool"]["torch-template"]["version"] == template_version()
    updating = (project / "docs" / "updating.md").read_text(encoding="utf-8")
    assert f"version {template_version()} of the torch-template" in updating
