"""The README and the pages under docs/ stay true to the project they describe.

Every relative link leads to a file of this project (and to a heading that exists, where it
names one); every command names a script, a module and config files that exist; every
`key=value` setting shown is a setting of the schema; every `pip install ".[extra]"` names an
extra of pyproject.toml. Each page opens with the command it is about, the README links every
page, and docs/layout.md names every module of the package. Nothing is run.
"""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.config import schema_fields
from {{ cookiecutter.package_name }}.data.survey import PHOTO_SIDE, SIDES
from {{ cookiecutter.package_name }}.input_size import BUDGET_IMAGES, TIME_BUDGET_S

PROJECT_ROOT = Path(__file__).resolve().parents[1]
README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
PACKAGE = schema_fields.__module__.split(".")[0]
SETTINGS = {key for key, _ in schema_fields()}

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
# A setting given as key=value: a dotted key (`data.root=...`) or the one top-level key.
OVERRIDE = re.compile(r"^(?P<key>[a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)+|seed)=")
EXTRA = re.compile(r"\.\[([\w,-]+)\]")
# The entry points whose further words are settings and config files.
TAKES_SETTINGS = {"train.py", "evaluate.py", "sweep.py", "scripts/slurm.sbatch"}


def page_id(path: Path) -> str:
    return path.relative_to(PROJECT_ROOT).as_posix()


def without_code_blocks(text: str) -> str:
    return FENCE.sub("", text)


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a page: lowercase, punctuation dropped, spaces
    as hyphens."""
    anchors = set()
    for line in without_code_blocks(text).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def shell_lines(text: str) -> list[str]:
    """The command lines of a page: its shell code blocks (continued lines joined, comments
    dropped) and the inline code that starts with `python`."""
    lines = []
    for language, body in FENCE.findall(text):
        if language in SHELL_LANGUAGES:
            for line in body.replace("\\\n", " ").splitlines():
                line = re.sub(r"(^|\s)#.*", "", line).strip()
                if line:
                    lines.append(line)
    inline = INLINE_CODE.findall(without_code_blocks(text))
    return lines + [code for code in inline if code.startswith("python ")]


def commands(line: str) -> list[list[str]]:
    """The words of each command on a line (split at ;, &&, | and &)."""
    return [shlex.split(part) for part in re.split(r"&&|;|\||&", line) if part.strip()]


def command_problems(words: list[str]) -> list[str]:
    """What in one command does not exist: its script, its module, its config files or its
    settings. Commands of other programs (pip, tensorboard, ...) are left alone."""
    while words and re.match(r"^[A-Z_]+=", words[0]):  # CUDA_VISIBLE_DEVICES=0 python ...
        words = words[1:]
    if not words or words[0] not in ("python", "python3", "torchrun", "sbatch"):
        return []
    arguments = words[1:]
    if words[0].startswith("python") and arguments[:1] == ["-m"]:
        module = arguments[1]
        if module.split(".")[0] == PACKAGE:
            exists = (PROJECT_ROOT / (module.replace(".", "/") + ".py")).is_file()
        else:
            exists = importlib.util.find_spec(module) is not None
        return [] if exists else [f"no module {module}"]
    scripts = [word for word in arguments if word.endswith((".py", ".sbatch"))]
    if not scripts:
        return [f"no script in {' '.join(words)!r}"]
    script = scripts[0]
    problems = [] if (PROJECT_ROOT / script).is_file() else [f"no script {script}"]
    if script not in TAKES_SETTINGS:
        return problems
    for word in arguments[arguments.index(script) + 1 :]:
        if word.startswith("configs/") and not (PROJECT_ROOT / word).is_file():
            problems.append(f"no config file {word}")
        override = OVERRIDE.match(word)
        if override and override["key"] not in SETTINGS:
            problems.append(f"no setting {override['key']} (in {word})")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(without_code_blocks(text)):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path) if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in heading_anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading with that anchor in {page_id(linked)}")
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_command_names_scripts_modules_and_settings_that_exist(page):
    text = page.read_text(encoding="utf-8")
    problems = [
        f"{line!r}: {problem}"
        for line in shell_lines(text)
        for words in commands(line)
        for problem in command_problems(words)
    ]
    assert not problems, problems


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_setting_in_inline_code_exists(page):
    spans = INLINE_CODE.findall(without_code_blocks(page.read_text(encoding="utf-8")))
    unknown = [
        span
        for span in spans
        if (match := OVERRIDE.match(span.strip("'"))) and match["key"] not in SETTINGS
    ]
    assert not unknown, unknown


def test_every_extra_named_in_an_install_exists():
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([\w-]+) *=", section, re.M))
    named = {
        extra
        for page in PAGES
        for group in EXTRA.findall(page.read_text(encoding="utf-8"))
        for extra in group.split(",")
    }
    assert named, "no page names an extra: the pattern no longer matches the install lines"
    assert named <= extras, f"extras that pyproject.toml lacks: {sorted(named - extras)}"


@pytest.mark.parametrize("page", PAGES[1:], ids=page_id)
def test_each_page_opens_with_its_command_and_is_linked_from_the_readme(page):
    lines = [line for line in page.read_text(encoding="utf-8").splitlines() if line.strip()]
    opening = lines[1:2] if lines[0].startswith("# ") else lines[:1]  # after a title, if any
    assert opening == ["```bash"], f"{page_id(page)}: no command block before its first words"
    readme_links = LINK.findall(README.read_text(encoding="utf-8"))
    assert page_id(page) in readme_links, f"the README does not link {page_id(page)}"


def test_the_recipe_and_its_excerpts_give_the_input_size_rule_the_code_follows():
    recipe = (DOCS / "recipe.md").read_text(encoding="utf-8")
    assert ", ".join(map(str, SIDES)) in recipe, "docs/recipe.md lists other sides than SIDES"
    budget = f"fits {TIME_BUDGET_S:g} s for up to {BUDGET_IMAGES:,} training images"
    assert budget in recipe, f"docs/recipe.md does not say the budget: {budget!r}"
    assert f"at least {PHOTO_SIDE} px" in recipe, "docs/recipe.md gives another photo size"
    # The auto: lines quoted from a run must be what a run logs now.
    quoted = {
        page_id(page): float(seconds)
        for page in PAGES
        for seconds in re.findall(
            r"lowered to fit (\d+) s of model compute", page.read_text(encoding="utf-8")
        )
    }
    assert quoted, "no page quotes an auto: line of data.image_size"
    stale = {page: seconds for page, seconds in quoted.items() if seconds != TIME_BUDGET_S}
    assert not stale, f"auto: lines with another budget than {TIME_BUDGET_S:g} s: {stale}"


def test_the_layout_page_names_every_module_of_the_package():
    layout = (DOCS / "layout.md").read_text(encoding="utf-8")
    named = set(re.findall(r"^ +([\w/]+\.py)\b", layout, re.M))
    modules = {path.name for path in (PROJECT_ROOT / PACKAGE).rglob("*.py")} - {"__init__.py"}
    missing = sorted(name for name in modules if name not in named)
    assert not missing, f"docs/layout.md does not name {missing}"


def test_the_architecture_page_sorts_every_module_into_yours_or_machinery():
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", page, flags=re.M)[1:]
    assert [section.splitlines()[0] for section in sections] == [
        "Yours",
        "Machinery with a place for yours",
        "Machinery",
    ]
    named = set(re.findall(r"`(?:[\w.]+/)*(\w+\.py)`", page))
    modules = {path.name for path in (PROJECT_ROOT / PACKAGE).rglob("*.py")}
    missing = sorted(modules - named)
    assert not missing, f"docs/architecture.md does not say whose {missing} are"
