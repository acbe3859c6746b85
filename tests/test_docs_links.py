"""The template's own pages lead somewhere: every relative link of README.md, docs/*.md and
bench/README.md names a file that exists (and a heading of it that exists, where the link
names one), and every template file a page names in code (`bench/run.py`) exists.

Links into the baked project's template (`{{cookiecutter.project_slug}}/docs/...`) are
checked as the files of the template, which is what a reader of this repository sees.
"""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.conftest import TEMPLATE

PAGES = sorted(
    [TEMPLATE / "README.md", TEMPLATE / "bench" / "README.md", *(TEMPLATE / "docs").glob("*.md")]
)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]+`")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
# Files of the template repository itself that a page may name in code: a path under one of
# these folders, ending in one of these suffixes. Folders the tools make (bench/results/,
# bench/wheels/) are not files of the repository, and docs/ is left out: the pages name the
# baked project's docs/ (`docs/security.md`) as often as the template's.
NAMED_FILE = re.compile(r"`((?:bench|hooks|\.ci)/[\w./-]+?\.(?:py|sh|txt|md|json|png)|\.ci/run)")


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchor_of(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, markup and punctuation dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its words
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of a Markdown file's headings; a repeated heading gets -1, -2, ..."""
    found, seen = set(), {}
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        anchor = anchor_of(heading)
        count = seen.get(anchor, 0)
        found.add(anchor if count == 0 else f"{anchor}-{count}")
        seen[anchor] = count + 1
    return found


def relative_links(page: Path) -> list[str]:
    links = LINK.findall(prose(page.read_text(encoding="utf-8")))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link, re.IGNORECASE)]


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file, or heading, does not exist."""
    broken = []
    for link in relative_links(page):
        path_part, _, fragment = link.partition("#")
        target = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not target.exists():
            broken.append(f"{link}: no file {target}")
        elif fragment and target.suffix == ".md" and unquote(fragment) not in anchors(target):
            broken.append(f"{link}: no heading #{fragment} in {target.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(TEMPLATE)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(TEMPLATE)))
def test_every_template_file_a_page_names_exists(page):
    named = set(NAMED_FILE.findall(page.read_text(encoding="utf-8")))
    assert sorted(name for name in named if not (TEMPLATE / name).exists()) == []


def test_the_pages_are_found_and_link_to_each_other():
    names = {str(page.relative_to(TEMPLATE)) for page in PAGES}
    assert {"README.md", "bench/README.md", "docs/architecture.md"} <= names
    readme_links = {link.partition("#")[0] for link in relative_links(TEMPLATE / "README.md")}
    # The README is the way in: every page of docs/ and the measurement record hang off it.
    assert {name for name in names if name != "README.md"} <= readme_links


def test_the_checks_see_a_broken_link_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A `code` heading: with punctuation\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[fine](other.md) [anchor](other.md#a-code-heading-with-punctuation)\n"
        "[self](#page) [web](https://example.com/x) `[not a link](nowhere.md)`\n"
        "```\n[in a code block](nowhere.md)\n```\n"
        "[gone](missing.md) [no heading](other.md#nothing) ![picture](missing.png)\n"
    )
    assert [problem.split(":")[0] for problem in broken_links(page)] == [
        "missing.md",
        "other.md#nothing",
        "missing.png",
    ]
