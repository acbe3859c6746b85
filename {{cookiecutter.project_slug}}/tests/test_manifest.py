"""The run manifest (manifest.py) and the data fingerprint (data/fingerprint.py): what they
record, how a change of data or environment is described, and git's state in and out of a
repository."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import write_images

from {{ cookiecutter.package_name }}.config import ConfigError
from {{ cookiecutter.package_name }}.data import build_datasets
from {{ cookiecutter.package_name }}.data.fingerprint import (
    LISTING_LIMIT,
    describe_change,
    fingerprint,
    summarize,
)
from {{ cookiecutter.package_name }}.manifest import (
    build_manifest,
    check_resume,
    compare_for_resume,
    git_state,
    read_manifest,
    write_manifest,
)
from {{ cookiecutter.package_name }}.train import main

CPU = torch.device("cpu")
CLASSES = {"cat": 4, "dog": 3}


@pytest.fixture
def image_folder(tmp_path, make_config):
    """(root, config) of a small image folder with train/ and val/."""
    root = tmp_path / "images"
    write_images(root / "train", CLASSES)
    write_images(root / "val", {"cat": 2, "dog": 2})
    return root, make_config("data.dataset=imagefolder", f"data.root={root}")


def test_identical_trees_give_the_same_fingerprint_wherever_they_are(image_folder, make_config):
    root, cfg = image_folder
    copy = root.parent / "copy"
    shutil.copytree(root, copy)
    first, again = fingerprint(cfg), fingerprint(cfg)
    elsewhere = fingerprint(make_config("data.dataset=imagefolder", f"data.root={copy}"))
    assert first == again
    assert first["sha256"] == elsewhere["sha256"] and first["root"] != elsewhere["root"]
    assert first["files"] == 11 and first["bytes"] == sum(
        path.stat().st_size for path in root.rglob("*.png")
    )
    assert sorted(first["folders"]) == ["train/cat", "train/dog", "val/cat", "val/dog"]
    assert describe_change(first, elsewhere) is None


def test_added_removed_and_resized_files_are_counted_and_named(image_folder):
    root, cfg = image_folder
    before = fingerprint(cfg)
    write_images(root / "train", {"cat": 2}, first=50)  # 050.png, 051.png
    (root / "val" / "dog" / "000.png").unlink()
    with open(root / "train" / "dog" / "001.png", "ab") as image:
        image.write(b"\0")
    after = fingerprint(cfg)
    assert after["sha256"] != before["sha256"]
    change = describe_change(before, after)
    assert f"11 -> 12 files, {before['bytes']:,} bytes -> {after['bytes']:,} bytes" in change
    assert "2 files added (e.g. train/cat/050.png, train/cat/051.png)" in change
    assert "1 file removed (e.g. val/dog/000.png)" in change
    assert "1 file resized (e.g. train/dog/001.png)" in change


def test_hidden_entries_other_files_and_loose_images_do_not_count(image_folder):
    root, cfg = image_folder
    before = fingerprint(cfg)
    hidden = root / "train" / "cat" / ".ipynb_checkpoints"
    write_images(hidden.parent, {".ipynb_checkpoints": 2})  # images in a hidden folder
    write_images(root / "train", {".thumbs": 1})  # a hidden class folder
    write_images(root / "train", {"__MACOSX": 1})  # macOS resource forks from a zip archive
    write_images(root / "val" / "dog", {"__MACOSX": 1})  # ... inside a class folder too
    (root / "train" / "cat" / ".001.png").write_bytes(b"hidden")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    write_images(root, {"train": 1}, first=900)  # an image loose beside the class folders
    (root / "README.md").write_text("about the images")
    assert fingerprint(cfg)["sha256"] == before["sha256"]


def test_the_fingerprint_lists_the_files_that_data_loading_reads(image_folder, make_config):
    root, _ = image_folder
    (root / "train" / "cat" / ".001.png").write_bytes(b"hidden")
    write_images(root / "train" / "cat", {"__MACOSX": 1})  # resource forks: not read
    write_images(root, {"other": 1})  # not in train/ or val/: not read
    nested = root / "train" / "dog" / "more"
    write_images(nested.parent, {"more": 2}, first=20)  # a sub-folder of a class: read
    cfg = make_config("data.dataset=imagefolder", f"data.root={root}")
    data = build_datasets(cfg.data, cfg.seed)
    read = {
        path.relative_to(root).as_posix()
        for part in (data.train, data.val)
        for path, _ in part.samples
    }
    assert set(fingerprint(cfg)["listing"]) == read


def test_a_split_folder_without_train_counts_its_class_folders(tmp_path, make_config):
    write_images(tmp_path / "flat", CLASSES)
    cfg = make_config("data.dataset=imagefolder", f"data.root={tmp_path / 'flat'}")
    assert sorted(fingerprint(cfg)["listing"]) == [
        *(f"cat/{n:03d}.png" for n in range(4)),
        *(f"dog/{n:03d}.png" for n in range(3)),
    ]


def test_a_large_listing_is_described_by_folder():
    half = LISTING_LIMIT // 2 + 1  # files in each of two folders: over the limit together
    files = {f"train/{c}/{n}.png": 100 for c in ("a", "b") for n in range(half)}
    before = summarize(files)
    assert before["listing"] is None and before["folders"]["train/a"][:2] == [half, 100 * half]
    files["train/a/new.png"] = 5
    files["train/c/new.png"] = 5
    del files["train/b/0.png"]
    change = describe_change(
        {**before, "dataset": "imagefolder"},
        {**summarize(files), "dataset": "imagefolder", "root": "/data"},
    )
    assert f"{2 * half} -> {2 * half + 1} files" in change
    assert "1 folder added (e.g. train/c)" in change
    assert (
        f"2 folders changed (e.g. train/a {half} -> {half + 1} files, "
        f"train/b {half} -> {half - 1} files)"
    ) in change


def test_the_built_in_shapes_are_fingerprinted_by_their_settings(make_config):
    first = fingerprint(make_config())
    assert first["settings"] == {"seed": 0, "train_size": 256, "val_size": 64, "image_size": 32}
    assert fingerprint(make_config("data.flip=false")) == first
    change = describe_change(first, fingerprint(make_config("seed=3", "data.train_size=300")))
    assert change == "the built-in shapes' settings changed: seed 0 -> 3, train_size 256 -> 300"


def test_a_torchvision_dataset_counts_only_its_own_folder(tmp_path, make_config):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    (batches / "data_batch_1").write_bytes(b"x" * 10)
    (batches / "batches.meta").write_bytes(b"x" * 3)
    cfg = make_config("data.dataset=cifar10", f"data.root={tmp_path}")
    before = fingerprint(cfg)
    assert before["listing"] == {
        "cifar-10-batches-py/batches.meta": 3,
        "cifar-10-batches-py/data_batch_1": 10,
    }
    (tmp_path / "MNIST").mkdir()
    (tmp_path / "MNIST" / "train-images").write_bytes(b"other dataset")
    assert fingerprint(cfg) == before
    (batches / "data_batch_1").write_bytes(b"x" * 11)
    assert "1 file resized" in describe_change(before, fingerprint(cfg))


def test_the_manifest_records_the_environment_and_the_data(image_folder, tmp_path):
    root, cfg = image_folder
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    written = write_manifest(run_dir, fingerprint(cfg), CPU, source=tmp_path)
    saved = read_manifest(run_dir)
    assert saved == json.loads(json.dumps(written))
    assert saved["torch"] == torch.__version__ and saved["python"].count(".") == 2
    assert saved["cuda"] is None and saved["cudnn"] is None  # on the CPU
    assert saved["device"] == "cpu" and saved["device_model"]
    assert torch.__version__.startswith(saved["packages"]["torch"])  # 2.15.0 of 2.15.0+cu132
    names = [name.lower() for name in saved["packages"]]
    assert names == sorted(names)
    assert saved["host"] and saved["started"].endswith("+00:00")
    assert saved["data"]["files"] == 11 and saved["git"] is None  # tmp_path is no repository
    assert saved["earlier_sessions"] == []
    assert not (run_dir / "git.diff").exists()


def git(folder: Path, *arguments: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
    command = ["git", *identity, "-C", str(folder), *arguments]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repository(tmp_path):
    """A git repository with one commit of `code.py`."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    folder = tmp_path / "project"
    folder.mkdir()
    git(folder, "init", "-q")
    (folder / "code.py").write_text("x = 1\n")
    git(folder, "add", "code.py")
    git(folder, "commit", "-q", "-m", "first")
    return folder


def test_git_state_of_a_clean_and_a_dirty_tree(repository):
    commit = git(repository, "rev-parse", "HEAD").strip()
    assert git_state(repository) == {"commit": commit, "dirty": False, "diff": ""}
    assert git_state(repository / ".git") is None  # inside .git is no work tree
    (repository / "code.py").write_text("x = 2\n")
    (repository / "new file.py").write_text("y = 1\n")
    state = git_state(repository)
    assert state["commit"] == commit and state["dirty"] is True
    assert state["diff"].startswith("# untracked: new file.py\n")
    assert "-x = 1\n+x = 2\n" in state["diff"]


def test_git_state_covers_the_whole_tree_but_the_run_folder(repository):
    package = repository / "package"
    package.mkdir()
    (package / "module.py").write_text("z = 1\n")
    git(repository, "add", "package")
    git(repository, "commit", "-q", "-m", "package")
    run_dir = repository / "runs-here" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    assert git_state(package, leave_out=run_dir)["dirty"] is False
    assert git_state(package)["dirty"] is True  # the run's files, when not left out
    (repository / "top.py").write_text("t = 1\n")  # outside the package's own folder
    (repository / "code.py").write_text("x = 5\n")
    state = git_state(package, leave_out=run_dir)
    assert state["diff"].startswith("# untracked: top.py\ndiff --git a/code.py b/code.py")
    assert write_manifest(run_dir, summarize({}), CPU, source=package)["git"]["dirty"]


def test_the_diff_is_saved_beside_the_manifest_and_each_resume_keeps_the_earlier(
    repository, tmp_path
):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data = summarize({"a/1.png": 3})
    (repository / "code.py").write_text("x = 2\n")
    first = write_manifest(run_dir, data, CPU, source=repository)
    assert first["git"]["dirty"] and first["git"]["diff_file"] == "git.diff"
    assert "+x = 2" in (run_dir / "git.diff").read_text()
    (repository / "code.py").write_text("x = 3\n")
    resumed = write_manifest(run_dir, data, CPU, source=repository)
    assert resumed["git"]["diff_file"] == "git.resume-1.diff"
    assert write_manifest(run_dir, data, CPU, source=repository)["git"]["diff_file"] == (
        "git.resume-2.diff"
    )
    assert "+x = 3" in (run_dir / "git.resume-1.diff").read_text()
    assert "+x = 2" in (run_dir / "git.diff").read_text()  # the first session's, kept
    earlier = read_manifest(run_dir)["earlier_sessions"]
    assert [session["git"]["diff_file"] for session in earlier] == [
        "git.diff",
        "git.resume-1.diff",
    ]
    assert "packages" not in earlier[0] and "listing" not in earlier[0]["data"]
    assert earlier[0]["data"]["sha256"] == data["sha256"]


def test_no_repository_or_no_git_is_no_error(repository, tmp_path, monkeypatch):
    assert git_state(tmp_path) is None
    assert git_state(repository) is not None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to be found
    assert git_state(repository) is None


def test_another_torch_cuda_or_device_is_one_warning_naming_old_and_new():
    current = build_manifest(summarize({"a/1.png": 3}), CPU)
    assert compare_for_resume(current, current) == ([], None)
    assert compare_for_resume(None, current) == ([], None)
    saved = {**current, "torch": "2.0.0", "cuda": "12.1", "cudnn": 8902, "device_model": "A100"}
    warnings, data_change = compare_for_resume(saved, current)
    assert data_change is None and len(warnings) == 1
    assert (
        f"torch 2.0.0 -> {torch.__version__}, CUDA 12.1 -> none, cuDNN 8902 -> none"
        in (warnings[0])
    )
    assert f"device A100 -> {current['device_model']}" in warnings[0]
    assert "not promised to be bit-identical" in warnings[0]


def test_changed_data_is_described_for_the_resume():
    saved = build_manifest({**summarize({"a/1.png": 3}), "dataset": "imagefolder"}, CPU)
    current = {
        **saved,
        "data": {**summarize({"a/1.png": 4}), "dataset": "imagefolder", "root": "/data"},
    }
    assert compare_for_resume(saved, current) == (
        [],
        "the data in /data changed (1 -> 1 files, 3 bytes -> 4 bytes): "
        "1 file resized (e.g. a/1.png)",
    )
    assert compare_for_resume({**saved, "data": None}, current) == ([], None)


def test_check_resume_warns_and_refuses_changed_data_unless_allowed(tmp_path, project_log):
    data = {**summarize({"a/1.png": 3}), "dataset": "imagefolder", "root": "/data"}
    saved = write_manifest(tmp_path, data, CPU, source=tmp_path)
    check_resume(tmp_path, data, CPU, allow_changed_data=False)
    assert project_log.text == ""
    (tmp_path / "manifest.json").write_text(json.dumps({**saved, "torch": "1.0"}))
    changed = {**summarize({"a/1.png": 4}), "dataset": "imagefolder", "root": "/data"}
    refusal = r"1 file resized \(e.g. a/1.png\), since .* set run.allow_changed_data=true"
    with pytest.raises(ConfigError, match=refusal):
        check_resume(tmp_path, changed, CPU, allow_changed_data=False)
    assert f"torch 1.0 -> {torch.__version__}" in project_log.text
    check_resume(tmp_path, changed, CPU, allow_changed_data=True)
    assert "continuing on changed data: the data in /data changed" in project_log.text


def test_a_missing_or_damaged_manifest_reads_as_none(tmp_path, project_log):
    assert read_manifest(tmp_path) is None
    (tmp_path / "manifest.json").write_text("{not json")
    assert read_manifest(tmp_path) is None
    assert "could not read" in project_log.text


@pytest.mark.slow
def test_wired_train_writes_the_manifest_and_refuses_changed_data_on_resume(
    image_folder, make_config
):
    """Needs train.py to call write_manifest and compare_for_resume (run.allow_changed_data)."""
    root, _ = image_folder
    settings = (
        "data.dataset=imagefolder",
        f"data.root={root}",
        "data.image_size=16",
        "train.epochs=2",
    )
    cfg = make_config(*settings, "train.max_steps=1")  # 1 of 2 steps: the run is unfinished
    assert main(cfg) == 0
    run_dir = Path(cfg.run.dir)
    saved = read_manifest(run_dir)
    for key in (
        "python",
        "torch",
        "cuda",
        "cudnn",
        "device_model",
        "packages",
        "git",
        "host",
        "started",
    ):
        assert key in saved, key
    assert saved["data"]["files"] == 11
    write_images(root / "train", {"dog": 1}, first=70)
    with pytest.raises(ConfigError, match=r"1 file added \(e.g. train/dog/070.png\)"):
        main(make_config(*settings, "train.max_steps=2", "run.resume=auto"))
    assert read_manifest(run_dir) == saved  # a refused resume changes nothing
    accept = ("train.max_steps=2", "run.resume=auto", "run.allow_changed_data=true")
    assert main(make_config(*settings, *accept)) == 0
    resumed = read_manifest(run_dir)
    assert resumed["data"]["files"] == 12 and len(resumed["earlier_sessions"]) == 1
