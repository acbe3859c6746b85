"""A setting the template renamed still works under its old name, with one warning.

The table is empty until the template renames a key; these tests give it rows of their own:
an old key in a settings file, on the command line and in a checkpoint's saved config is read
as the new one, the new one wins where both are given, and a key may move to another section.
"""

import pytest

from {{ cookiecutter.package_name }} import renamed_settings
from {{ cookiecutter.package_name }}.config import ConfigError, load_config, load_saved_config, to_dict
from {{ cookiecutter.package_name }}.resume_rules import settings_given

ROWS = (
    ("9.0.0", "train.old_log_every", "train.log_every"),
    ("9.1.0", "data.old_seed", "train.old_split"),  # moved to another section...
    ("9.2.0", "train.old_split", "data.split_seed"),  # ...and renamed again later
)


@pytest.fixture
def renames(monkeypatch):
    monkeypatch.setattr(renamed_settings, "RENAMED", ROWS)
    monkeypatch.setattr(renamed_settings, "_warned", set())


def warnings_of(project_log) -> list[str]:
    return [r.getMessage() for r in project_log.records if r.name == renamed_settings.__name__]


def test_an_old_key_in_a_settings_file_sets_the_new_one(renames, tmp_path, project_log):
    settings = tmp_path / "old.yaml"
    settings.write_text("train:\n  old_log_every: 7  # written before the rename\n")
    cfg = load_config([settings], [])
    assert cfg.train.log_every == 7
    (warning,) = warnings_of(project_log)
    assert str(settings) in warning and "train.old_log_every" in warning
    assert "train.log_every" in warning and "9.0.0" in warning


def test_an_old_key_on_the_command_line_sets_the_new_one(renames, project_log):
    cfg = load_config([], ["train.old_log_every=9", "data.old_seed=4"])
    assert cfg.train.log_every == 9
    assert cfg.data.split_seed == 4  # followed through both of its renames
    assert len(warnings_of(project_log)) == 2  # one per key given, named with its name today


def test_a_checkpoint_saved_before_the_rename_loads(renames, project_log):
    saved = to_dict(load_config([], ["data.split_seed=3"]))
    saved["data"]["old_seed"] = saved["data"].pop("split_seed")
    before = repr(saved)
    cfg = load_saved_config(saved, [])
    load_saved_config(saved, [])  # a run reads its checkpoint's config more than once
    assert cfg.data.split_seed == 3
    assert repr(saved) == before, "the checkpoint's own dict was changed"
    (warning,) = warnings_of(project_log)
    assert "the checkpoint: data.old_seed was renamed data.split_seed" in warning


def test_where_both_are_given_the_new_key_wins(renames, tmp_path, project_log):
    settings = tmp_path / "both.yaml"
    settings.write_text("train:\n  old_log_every: 7\n  log_every: 11\n")
    cfg = load_config([settings], [])
    assert cfg.train.log_every == 11
    assert any("both are given" in w for w in warnings_of(project_log))


def test_without_renames_an_unknown_key_is_still_one_error(tmp_path):
    settings = tmp_path / "old.yaml"
    settings.write_text("train:\n  old_log_every: 7\n")
    with pytest.raises(ConfigError, match="old_log_every"):
        load_config([settings], [])


def test_a_resume_counts_an_old_key_as_the_new_one_given(renames, tmp_path):
    settings = tmp_path / "old.yaml"
    settings.write_text("train:\n  old_log_every: 7\n")
    given = settings_given([settings], ["data.old_seed=2", "train.epochs=3"])
    assert given == {"train.log_every", "data.split_seed", "train.epochs"}
