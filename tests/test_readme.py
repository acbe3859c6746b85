"""The template's README says what the template does: its test command is the one CI runs
(.ci/run), and its prompts table is cookiecutter.json's prompts, with their defaults and
choices. Plain reading, no bake."""

import json
import re

from tests.conftest import TEMPLATE

README = (TEMPLATE / "README.md").read_text(encoding="utf-8")
PROMPTS = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))


def section(heading: str) -> str:
    """The text under a `## heading` of the README, up to the next `## `."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"the README has no section '## {heading}'"
    return match.group(1)


def test_ci_runs_exactly_the_readme_test_command():
    tests = section("Run the tests")
    blocks = re.findall(r"^```bash\n(.*?)^```", tests, re.M | re.S)
    assert blocks, "no command in 'Run the tests'"
    command = blocks[0].strip()
    assert "\n" not in command  # one command, copied whole
    ci_lines = (TEMPLATE / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    # .ci/run goes to the checkout's root, then runs the command and nothing after it.
    assert ci_lines[-1] == command
    assert "`bash .ci/run` runs exactly this command." in tests


def prompt_rows() -> list[tuple[list[str], str, str]]:
    """(names, default, meaning) of each row of the README's prompts table."""
    rows = []
    for line in section("Prompts").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("prompt", "---"):
            continue
        rows.append((re.findall(r"`(\w+)`", cells[0]), cells[1], cells[2]))
    return rows


def test_the_prompts_table_names_every_prompt_in_order():
    asked = [name for name in PROMPTS if not name.startswith("_")]
    listed = [name for names, _, _ in prompt_rows() for name in names]
    assert listed == asked


def test_the_prompts_table_gives_each_default_and_every_choice():
    for names, default, meaning in prompt_rows():
        for name in names:
            value = PROMPTS[name]
            if isinstance(value, bool):
                assert default == ("yes" if value else "no"), name
            elif isinstance(value, list):  # a choice: the first is the default
                assert default.strip("`") == value[0], name
                for choice in value:
                    assert re.search(rf"(?<![\w-]){re.escape(choice)}(?![\w-])", meaning), (
                        f"{name}: the choice {choice} is not named"
                    )


def test_the_table_is_read_row_by_row():
    rows = {tuple(names): (default, meaning) for names, default, meaning in prompt_rows()}
    assert ("author_name", "author_email") in rows  # a row may name two prompts
    assert rows[("license",)][0] == "MIT" and rows[("use_ddp",)][0] == "no"
    assert "`mlflow`" in rows[("tracker",)][1]
