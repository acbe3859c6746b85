"""copier's migration before an update: the project's settings files take the renamed keys.

copier.yml runs it in the project, before the update's merge, with the new template's folder:

    python hooks/migrations.py PROJECT_DIR TEMPLATE_DIR

The new template's renamed_settings.py lists each renamed setting as (version, old key, new
key); the project's pyproject.toml records the template version it was baked from
([tool.torch-template] version). Every rename made after that version is applied to each YAML
file under the project's configs/, in place: only the key's own name changes, so comments,
order and layout stay. A key that moves to another section cannot be renamed in place: it is
named in one line, and the project reads it under its new name with a warning
(renamed_settings.py) until it is moved by hand. The files changed are staged with git, so
that copier's merge sees them as the project's own changes.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import yaml

RENAMES_FILE = Path(
    "{{cookiecutter.project_slug}}", "{{cookiecutter.package_name}}", "renamed_settings.py"
)
VERSION_LINE = re.compile(r'^\[tool\.torch-template\]\s*\nversion\s*=\s*"([^"]+)"', re.M)


def renames(template: Path) -> list[tuple[str, str, str]]:
    """The RENAMED table of the template's renamed_settings.py, read without running it."""
    tree = ast.parse((template / RENAMES_FILE).read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "RENAMED" and node.value is not None:
            return [tuple(row) for row in ast.literal_eval(node.value)]
    raise SystemExit(f"error: {template / RENAMES_FILE} has no RENAMED table")


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def baked_version(project: Path) -> str:
    """The template version the project came from; "0" when it does not say (before 0.3.0)."""
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8") if pyproject.is_file() else ""
    match = VERSION_LINE.search(text)
    return match.group(1) if match else "0"


def key_positions(node: yaml.Node, prefix: str = "") -> dict[str, yaml.Mark]:
    """Where each dotted key's name starts in a composed YAML mapping."""
    positions = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = f"{prefix}{key_node.value}"
                positions[key] = key_node.start_mark
                positions.update(key_positions(value_node, f"{key}."))
    return positions


def rename_in_text(text: str, old: str, new: str) -> tuple[str, str | None]:
    """``text`` with the key ``old`` renamed ``new`` in place, and why not where it is there
    but cannot be (None when renamed or absent)."""
    positions = key_positions(yaml.compose(text, Loader=yaml.SafeLoader))
    mark = positions.get(old)
    if mark is None:
        return text, None
    if new in positions:
        return text, f"{new} is there too and wins: delete {old}"
    if old.rpartition(".")[0] != new.rpartition(".")[0]:
        return text, f"it moves to another section: move it to {new} by hand"
    old_name, new_name = old.rpartition(".")[2], new.rpartition(".")[2]
    start = mark.index
    if text[start : start + len(old_name)] != old_name:
        return text, f"it is written quoted: rename it {new} by hand"
    return text[:start] + new_name + text[start + len(old_name) :], None


def migrated_text(path: Path, due: list[tuple[str, str, str]], project: Path) -> str | None:
    """The file's text with the due renames made, or None when it cannot be read as one YAML
    mapping (it is then named and left as it is: the run will say what is wrong with it)."""
    name = path.relative_to(project)
    try:
        with path.open(encoding="utf-8", newline="") as file:  # keeps CRLF as it is
            text = file.read()
        for version, old, new in due:
            text, left_because = rename_in_text(text, old, new)
            if left_because:
                print(f"{name}: {old} was renamed {new} in version {version}; {left_because}")
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"{name}: not migrated, it cannot be read as YAML ({reason})")
        return None
    return text


def main(project: Path, template: Path) -> int:
    """Rename the due keys in every YAML file under the project's configs/; all files are read
    and renamed in memory first, then written, so a file that cannot be read stops nothing."""
    since = version_key(baked_version(project))
    # A row of the version the project was baked with counts: the rename may have come later
    # in that version's round, and an old key that is not there is simply not found.
    due = [row for row in renames(template) if version_key(row[0]) >= since]
    configs = project / "configs"
    if not due or not configs.is_dir():
        return 0
    files = sorted(path for path in configs.rglob("*") if path.suffix in (".yaml", ".yml"))
    migrated = {path: migrated_text(path, due, project) for path in files if path.is_file()}
    changed = [
        path
        for path, text in migrated.items()
        if text is not None and text.encode("utf-8") != path.read_bytes()
    ]
    for path in changed:
        with path.open("w", encoding="utf-8", newline="") as file:
            file.write(migrated[path])
        print(f"{path.relative_to(project)}: settings renamed by the template's newer versions")
    if changed and (project / ".git").exists():
        subprocess.run(["git", "add", "--", *map(str, changed)], cwd=project, check=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: migrations.py PROJECT_DIR TEMPLATE_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
