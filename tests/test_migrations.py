"""hooks/migrations.py: copier's migration renames old keys in a project's YAML settings.

Only the key's name changes (comments, order, flow or block style stay); renames made up to
the version the project was baked from are left alone; a key that moves to another section
is named, not moved; the template's own table reads as a list of rows.
"""

import subprocess
from pathlib import Path

from hooks import migrations
from tests.conftest import TEMPLATE

BLOCK = "train:\n  epochs: 5      # mine\n  log_every: 7   # every 7 steps\nseed: 1\n"
FLOW = "train: {log_every: 7, epochs: 5}\n"


def test_a_key_is_renamed_in_place_keeping_comments_and_style():
    renamed, left = migrations.rename_in_text(BLOCK, "train.log_every", "train.print_every")
    assert left is None
    assert renamed == BLOCK.replace("log_every", "print_every")
    renamed, _ = migrations.rename_in_text(FLOW, "train.log_every", "train.print_every")
    assert renamed == "train: {print_every: 7, epochs: 5}\n"


def test_a_key_elsewhere_or_absent_is_left_as_it_is():
    text = "data:\n  log_every: 7\n"  # the same name under another section
    assert migrations.rename_in_text(text, "train.log_every", "train.x") == (text, None)


def test_a_key_moving_to_another_section_is_named_not_moved(tmp_path, capsys):
    project = make_project(tmp_path, "0.3.0", BLOCK)
    template = make_template(tmp_path, [("0.4.0", "train.log_every", "log.every")])
    assert migrations.main(project, template) == 0
    assert (project / "configs" / "default.yaml").read_text() == BLOCK
    (line,) = capsys.readouterr().out.splitlines()
    assert "train.log_every was renamed log.every" in line and "by hand" in line


def test_renames_from_the_baked_version_on_apply(tmp_path):
    rows = [
        ("0.2.0", "train.epochs", "train.rounds"),  # before the bake: the key is someone else's
        ("0.3.0", "seed", "base_seed"),  # the bake's own version: maybe renamed after the bake
        ("0.4.0", "train.log_every", "train.k"),
    ]
    project = make_project(tmp_path, "0.3.0", BLOCK)
    migrations.main(project, make_template(tmp_path, rows))
    text = (project / "configs" / "default.yaml").read_text()
    assert "epochs: 5" in text and "k: 7   # every 7 steps" in text and "base_seed: 1" in text


def test_a_file_that_is_not_one_yaml_mapping_stops_nothing(tmp_path, capsys):
    project = make_project(tmp_path, "0.3.0", BLOCK)
    experiments = project / "configs" / "experiments"
    experiments.mkdir()
    (experiments / "a_two_documents.yaml").write_text("train:\n  epochs: 3\n---\nseed: 2\n")
    (experiments / "b_broken.yaml").write_text("train: [unclosed\n")
    (experiments / "c.yml").write_text("train:\r\n  log_every: 3\r\n")
    migrations.main(project, make_template(tmp_path, [("0.4.0", "train.log_every", "train.k")]))
    assert "k: 7" in (project / "configs" / "default.yaml").read_text()
    assert (experiments / "c.yml").read_bytes() == b"train:\r\n  k: 3\r\n"  # CRLF kept
    assert (experiments / "b_broken.yaml").read_text() == "train: [unclosed\n"
    lines = capsys.readouterr().out.splitlines()
    assert sum("not migrated" in line for line in lines) == 2


def test_a_file_with_both_keys_is_left_for_the_user(tmp_path, capsys):
    both = "train:\n  log_every: 7\n  k: 3\n"
    project = make_project(tmp_path, "0.3.0", both)
    migrations.main(project, make_template(tmp_path, [("0.4.0", "train.log_every", "train.k")]))
    assert (project / "configs" / "default.yaml").read_text() == both
    assert "train.k is there too and wins: delete train.log_every" in capsys.readouterr().out


def test_the_changed_files_are_staged_for_copier_merge(tmp_path):
    project = make_project(tmp_path, "0.3.0", BLOCK)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    migrations.main(project, make_template(tmp_path, [("1.0.0", "seed", "base_seed")]))
    staged = subprocess.run(
        ["git", "diff", "--cached", "--name-only"], cwd=project, capture_output=True, text=True
    ).stdout.split()
    assert staged == ["configs/default.yaml"]


def test_the_template_table_is_read_without_running_it():
    rows = migrations.renames(TEMPLATE)
    assert isinstance(rows, list) and all(len(row) == 3 for row in rows)


def make_project(tmp_path: Path, version: str, settings: str) -> Path:
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "configs" / "default.yaml").write_text(settings)
    (project / "pyproject.toml").write_text(f'[tool.torch-template]\nversion = "{version}"\n')
    return project


def make_template(tmp_path: Path, rows: list) -> Path:
    template = tmp_path / "template"
    table = template / migrations.RENAMES_FILE
    table.parent.mkdir(parents=True)
    table.write_text(f"RENAMED: tuple[tuple[str, str, str], ...] = {tuple(rows)!r}\n")
    return template
