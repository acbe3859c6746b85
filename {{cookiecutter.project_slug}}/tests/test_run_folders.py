"""Whose folder a run writes: a new or empty one, or a run folder this project made."""

import json
import shutil
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.runs import RUN_MARKER
from {{ cookiecutter.package_name }}.train import run


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder`, by relative path, with its bytes (links by their target)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if path.is_symlink():
            files[relative] = str(path.readlink()).encode()
        elif path.is_file():
            files[relative] = path.read_bytes()
        else:
            files[relative] = b"<folder>"
    return files


def one_error_line(capsys) -> str:
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    return errors[0]


def users_folder(folder: Path) -> Path:
    """A folder of someone's own files, named as a run's files are."""
    folder.mkdir(parents=True)
    for name in ("config.yaml", "metrics.csv", "manifest.json", "train.log", "notes.txt"):
        (folder / name).write_text(f"the user's own {name}\n", encoding="utf-8")
    (folder / "loss.png").write_bytes(b"not ours")
    return folder


@pytest.mark.parametrize("resume", [None, "auto"])
def test_a_run_refuses_a_folder_of_other_files_and_changes_nothing(
    make_config, tmp_path, capsys, resume
):
    folder = users_folder(tmp_path / "mine")
    before = snapshot(folder)
    settings = ["train.max_steps=1"] + ([f"run.resume={resume}"] if resume else [])

    assert run(make_config(*settings, run_dir=folder)) == 2

    line = one_error_line(capsys)
    assert str(folder) in line and "run.dir" in line and RUN_MARKER in line
    assert snapshot(folder) == before


def test_an_old_run_whose_checkpoints_were_pruned_is_not_written_over(
    make_config, tmp_path, capsys
):
    folder = tmp_path / "run"
    assert run(make_config("train.max_steps=2", run_dir=folder)) == 0
    shutil.rmtree(folder / "checkpoints")
    (folder / RUN_MARKER).unlink()  # as a run made before the marker existed would be
    before = snapshot(folder)

    assert run(make_config("train.max_steps=2", run_dir=folder)) == 2

    assert str(folder) in one_error_line(capsys)
    assert snapshot(folder) == before


def test_a_new_or_empty_folder_becomes_a_marked_run_folder(make_config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (tmp_path / "new" / "deeper", empty):
        assert run(make_config("train.max_steps=1", run_dir=folder)) == 0
        marker = json.loads((folder / RUN_MARKER).read_text(encoding="utf-8"))
        assert marker["kind"] == "run folder"
        assert (folder / "checkpoints" / "last.pt").is_file()


def test_a_marked_run_folder_without_checkpoints_takes_a_fresh_run(make_config, tmp_path):
    folder = tmp_path / "run"
    assert run(make_config("train.max_steps=1", run_dir=folder)) == 0
    shutil.rmtree(folder / "checkpoints")  # e.g. pruned by hand: the folder is still ours

    assert run(make_config("train.max_steps=1", run_dir=folder)) == 0
    assert (folder / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("resume", ["folder", "auto"])
def test_a_run_folder_from_before_the_marker_is_resumed_and_marked(make_config, tmp_path, resume):
    folder = tmp_path / "run"
    assert run(make_config("train.max_steps=2", run_dir=folder)) == 0
    (folder / RUN_MARKER).unlink()

    target = folder if resume == "folder" else "auto"
    assert run(make_config("train.max_steps=4", f"run.resume={target}", run_dir=folder)) == 0

    assert (folder / RUN_MARKER).is_file()
    assert "stopped at step 4" in (folder / "train.log").read_text(encoding="utf-8")


def test_a_checkpoint_among_other_files_is_forked_never_continued_in_place(
    make_config, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the default runs/ of a fork
    assert run(make_config("train.max_steps=2", run_dir=tmp_path / "run")) == 0
    downloads = users_folder(tmp_path / "downloads")
    for part in (tmp_path / "run" / "checkpoints").glob("step-*"):  # with its weights file
        shutil.copy(part, downloads / part.name.replace("step-00000002", "shared"))
    before = snapshot(downloads)
    checkpoint = downloads / "shared.pt"

    assert run(make_config("train.max_steps=1", f"run.resume={checkpoint}", "run.dir=null")) == 2
    line = one_error_line(capsys)
    assert str(downloads) in line and "run.fork=true" in line
    assert snapshot(downloads) == before

    forked = make_config(
        "train.max_steps=1", f"run.resume={checkpoint}", "run.fork=true", "run.dir=null"
    )
    assert run(forked) == 0
    assert snapshot(downloads) == before
    (child,) = [path for path in (tmp_path / "runs").iterdir() if not path.is_symlink()]
    assert (child / RUN_MARKER).is_file() and (child / "checkpoints" / "last.pt").is_file()


def test_runs_latest_is_replaced_only_when_it_is_the_projects_link(
    make_config, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "latest").write_text("the user's own notes\n", encoding="utf-8")

    assert run(make_config("train.max_steps=1", "run.dir=null")) == 0
    assert (tmp_path / "runs" / "latest").read_text() == "the user's own notes\n"

    (tmp_path / "runs" / "latest").unlink()
    assert run(make_config("train.max_steps=1", "run.dir=null")) == 0
    assert (tmp_path / "runs" / "latest").is_symlink()


@pytest.mark.parametrize("victim_exists", [True, False])
def test_a_run_lock_that_is_a_link_is_never_written_through(
    make_config, tmp_path, capsys, victim_exists
):
    victim = tmp_path / "victim.txt"
    if victim_exists:
        victim.write_text("the user's own file\n", encoding="utf-8")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "run.lock").symlink_to(victim)
    trained = tmp_path / "trained"  # a run folder of this project, its lock since replaced
    assert run(make_config("train.max_steps=1", run_dir=trained)) == 0
    (trained / "run.lock").unlink()
    (trained / "run.lock").symlink_to(victim)
    capsys.readouterr()

    for folder, settings in ((fresh, []), (trained, ["run.resume=auto"])):
        before = snapshot(folder)
        assert run(make_config("train.max_steps=2", *settings, run_dir=folder)) == 2
        assert str(folder) in one_error_line(capsys)
        assert snapshot(folder) == before
    if victim_exists:
        assert victim.read_text(encoding="utf-8") == "the user's own file\n"
    else:
        assert not victim.exists()  # a dangling link is not followed to make its target


def test_a_tensorboard_folder_that_is_a_link_is_set_aside_never_written_through(
    make_config, tmp_path
):
    from {{ cookiecutter.package_name }}.features import feature_module

    if feature_module("tensorboard_log") is None:
        pytest.skip("this project was made without TensorBoard")
    folder = tmp_path / "run"
    assert run(make_config("train.max_steps=1", run_dir=folder)) == 0
    victim = tmp_path / "users_folder"
    victim.mkdir()
    (victim / "notes.txt").write_text("the user's own file\n", encoding="utf-8")
    shutil.rmtree(folder / "tensorboard")
    (folder / "tensorboard").symlink_to(victim, target_is_directory=True)
    before = snapshot(victim)

    assert run(make_config("train.max_steps=2", "run.resume=auto", run_dir=folder)) == 0

    assert snapshot(victim) == before
    assert (folder / "tensorboard.corrupt-1").is_symlink()
    tensorboard = folder / "tensorboard"
    assert not tensorboard.is_symlink() and any(tensorboard.glob("events.out.tfevents.*"))


def test_a_checkpoints_folder_that_is_a_link_is_refused_and_its_target_left_alone(
    make_config, tmp_path, capsys
):
    folder = tmp_path / "run"
    assert run(make_config("train.max_steps=1", run_dir=folder)) == 0
    elsewhere = tmp_path / "elsewhere"
    (folder / "checkpoints").rename(elsewhere)
    (folder / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    before, before_elsewhere = snapshot(folder), snapshot(elsewhere)
    capsys.readouterr()

    assert run(make_config("train.max_steps=3", "run.resume=auto", run_dir=folder)) == 2

    assert str(folder / "checkpoints") in one_error_line(capsys)
    assert snapshot(folder) == before and snapshot(elsewhere) == before_elsewhere
