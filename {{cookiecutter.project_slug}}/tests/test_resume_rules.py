"""Resume does what the user means: a resumed run keeps its own settings, refuses changes that
would alter how it trains (naming them, with the ways forward: run.fork, run.extend), and one
run at a time writes a run folder."""

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PROJECT_ROOT, SMALL_OVERRIDES, wait_for_file, write_images
from PIL import Image

from {{ cookiecutter.package_name }}.checkpoint import CheckpointManager, load_checkpoint
from {{ cookiecutter.package_name }}.log import read_csv

CHECKPOINTS = Path("checkpoints")


@pytest.fixture
def train_cli(monkeypatch, capsys):
    """train_cli(*argv) -> (exit code, stdout + stderr): `python train.py ARGV`, in-process."""
    spec = importlib.util.spec_from_file_location("train_entry", PROJECT_ROOT / "train.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)

    def call(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["train.py", *argv])
        try:
            code = entry.main()
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return call


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its content and modification time."""
    return {
        path: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def last_progress(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / CHECKPOINTS / "last.pt")["progress"]


def newest_step(run_dir: Path) -> int:
    found = CheckpointManager(run_dir / CHECKPOINTS, is_main=False).load_newest_valid()
    return found[1]["progress"]["global_step"]


def assert_same_weights(run_dir: Path, expected_dir: Path) -> None:
    expected = load_checkpoint(expected_dir / CHECKPOINTS / "last.pt")
    actual = load_checkpoint(run_dir / CHECKPOINTS / "last.pt")
    assert actual["progress"]["global_step"] == expected["progress"]["global_step"]
    for key, tensor in expected["model"].items():
        assert torch.equal(actual["model"][key], tensor), key


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_the_printed_continue_command_continues_exactly(train_cli, subprocess_env, tmp_path):
    """Ctrl-C on a 2-epoch run, then the printed command pasted as it is: the run ends after
    its own 2 epochs, exactly as a run never stopped (not after the default's)."""
    run_dir, settings = tmp_path / "run", (*SMALL_OVERRIDES, "train.epochs=2", "sched.name=cosine")
    process = subprocess.Popen(
        [sys.executable, "train.py", *settings, "run.save_every_steps=2", f"run.dir={run_dir}"],
        cwd=PROJECT_ROOT,
        env=subprocess_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_file(run_dir / CHECKPOINTS / "last.pt", process, timeout=120)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, output[-3000:]
    command = re.search(r"continue with: (python train\.py .*)$", output, re.MULTILINE)
    assert command, output[-2000:]
    argv = shlex.split(command.group(1))[2:]  # after "python train.py"

    code, resumed = train_cli(*argv)
    assert code == 0, resumed[-2000:]
    assert last_progress(run_dir)["epoch"] == 2
    straight = tmp_path / "straight"
    assert train_cli(*settings, "run.save_every_steps=2", f"run.dir={straight}")[0] == 0
    assert_same_weights(run_dir, straight)


@pytest.mark.slow
def test_a_change_that_alters_training_is_refused_by_name_and_nothing_changes(train_cli, tmp_path):
    run_dir = tmp_path / "run"
    assert train_cli(*SMALL_OVERRIDES, "train.max_steps=3", f"run.dir={run_dir}")[0] == 0
    before = snapshot(run_dir)
    code, output = train_cli(f"run.resume={run_dir}", "optim.lr=0.001", "data.flip=false")
    errors = error_lines(output)
    assert code == 2 and len(errors) == 1, output[-2000:]
    assert "optim.lr 0.01 -> 0.001" in errors[0] and "data.flip True -> False" in errors[0]
    assert "run.fork=true" in errors[0] and f"run.resume={run_dir}" in errors[0]
    assert "run.extend" not in errors[0]  # the run has not finished
    assert snapshot(run_dir) == before
    # Settings that leave the steps unchanged may change: the run goes on.
    code, output = train_cli(f"run.resume={run_dir}", "train.max_steps=5", "run.keep_last=2")
    assert code == 0, output[-2000:]
    assert last_progress(run_dir)["global_step"] == 5


@pytest.mark.slow
def test_a_finished_run_resumed_says_so_and_changes_nothing(train_cli, tmp_path):
    run_dir = tmp_path / "run"
    assert train_cli(*SMALL_OVERRIDES, f"run.dir={run_dir}")[0] == 0
    before = snapshot(run_dir)
    code, output = train_cli(f"run.resume={run_dir}")
    assert code == 0, output[-2000:]
    finished = [line for line in output.splitlines() if "has finished" in line]
    assert len(finished) == 1 and "1 of 1 epochs" in finished[0], output[-2000:]
    assert "run.extend=true train.epochs=2" in finished[0]
    assert "done in" not in output and "resumed from" not in output
    assert snapshot(run_dir) == before
    # A change to it is refused with the ways that go on from a finished run: continuing
    # it unchanged has nothing left to train, and run.extend cannot change the lr.
    code, output = train_cli(f"run.resume={run_dir}", "optim.lr=0.001")
    errors = error_lines(output)
    assert code == 2 and len(errors) == 1, output[-2000:]
    assert "has finished (1 of 1 epochs trained)" in errors[0]
    assert "unchanged" not in errors[0] and "run.extend" not in errors[0]
    assert "optim.lr 0.01 -> 0.001" in errors[0] and "run.fork=true" in errors[0]
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_a_finished_run_extends_on_a_schedule_of_its_own_and_resumes_exactly(train_cli, tmp_path):
    """A finished cosine run given more epochs: refused with the way forward, then with
    run.extend=true the extra epochs train at a learning rate well above 0 (not at the end
    of the old curve), and an extension stopped midway resumes exactly."""
    cosine = (*SMALL_OVERRIDES, "train.epochs=2", "sched.name=cosine", "sched.warmup_epochs=0")
    runs = {name: tmp_path / name for name in ("split", "straight")}
    for run_dir in runs.values():
        assert train_cli(*cosine, f"run.dir={run_dir}")[0] == 0
    code, output = train_cli(f"run.resume={runs['split']}", "train.epochs=3")
    errors = error_lines(output)
    assert code == 2 and len(errors) == 1 and "train.epochs 2 -> 3" in errors[0], output
    assert "add run.extend=true" in errors[0] and "has finished" in errors[0]
    assert "continue it unchanged" not in errors[0]  # resuming unchanged trains nothing

    extend = ("run.extend=true", "train.epochs=3")
    code, output = train_cli(f"run.resume={runs['straight']}", *extend)
    assert code == 0, output[-2000:]
    assert f"run.extend: epoch 3 of {runs['straight']}," in output  # not "epochs 3 to 3"
    steps_per_epoch = int(read_csv(runs["straight"] / "metrics.csv")[0]["step"])
    lrs = {int(row["step"]): float(row["lr"]) for row in read_csv(runs["straight"] / "lr.csv")}
    assert lrs[2 * steps_per_epoch] < 0.001  # the end of the first schedule
    assert lrs[2 * steps_per_epoch + 1] > 0.009  # the start of the extra epochs' own
    assert last_progress(runs["straight"])["epoch"] == 3

    # The same extension, stopped after 3 of its steps and resumed: the same weights.
    middle = 2 * steps_per_epoch + 3
    code, output = train_cli(f"run.resume={runs['split']}", *extend, f"train.max_steps={middle}")
    assert code == 0 and last_progress(runs["split"])["global_step"] == middle, output[-2000:]
    assert train_cli(f"run.resume={runs['split']}", "train.max_steps=0")[0] == 0
    assert_same_weights(runs["split"], runs["straight"])
    assert last_progress(runs["split"]) == last_progress(runs["straight"])


@pytest.mark.slow
def test_extend_needs_a_finished_run_and_more_epochs(train_cli, tmp_path):
    run_dir = tmp_path / "run"
    assert train_cli(*SMALL_OVERRIDES, "train.max_steps=2", f"run.dir={run_dir}")[0] == 0
    code, output = train_cli(f"run.resume={run_dir}", "run.extend=true", "train.epochs=3")
    assert code == 2 and "has not finished" in error_lines(output)[0], output[-2000:]
    assert train_cli(f"run.resume={run_dir}", "train.max_steps=0")[0] == 0
    code, output = train_cli(f"run.resume={run_dir}", "run.extend=true")
    assert code == 2 and "larger than the 1 epoch " in error_lines(output)[0], output[-2000:]
    code, output = train_cli("run.extend=true")
    assert code == 2 and "run.resume" in error_lines(output)[0], output[-2000:]


@pytest.mark.slow
def test_fork_starts_a_new_run_from_the_weights_and_records_its_parent(
    train_cli, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # new run folders go to ./runs
    parent = tmp_path / "parent"
    assert train_cli(*SMALL_OVERRIDES, f"run.dir={parent}")[0] == 0
    before = snapshot(parent)
    code, output = train_cli(f"run.resume={parent}", "run.fork=true", "optim.lr=0.003")
    assert code == 0, output[-2000:]
    assert snapshot(parent) == before
    (child,) = [path for path in (tmp_path / "runs").iterdir() if not path.is_symlink()]
    checkpoint = load_checkpoint(child / CHECKPOINTS / "last.pt")
    assert checkpoint["config"]["optim"]["lr"] == 0.003
    assert checkpoint["config"]["data"]["train_size"] == 256  # the parent's settings
    assert checkpoint["progress"]["epoch"] == 1  # a run of its own: epoch 1 of 1
    parent_step = (parent / CHECKPOINTS / "last.pt").resolve()
    assert checkpoint["config"]["model"]["weights"] == str(parent_step)
    assert checkpoint["config"]["run"]["resume"] is None


@pytest.mark.slow
def test_nan_advice_leads_to_a_finished_run(train_cli, tmp_path, monkeypatch):
    """The loss turns NaN; the error's own command, pasted, trains to the end."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    exploding = (*SMALL_OVERRIDES, "train.epochs=2", "optim.name=sgd", "sched.name=none")
    # SGD at lr 100 diverges a few steps in, after the first checkpoints (lr 10 does not).
    code, output = train_cli(
        *exploding, "optim.lr=100", "run.save_every_steps=1", f"run.dir={run_dir}"
    )
    errors = error_lines(output)
    assert code == 1 and len(errors) == 1 and "NaN or infinite" in errors[0], output[-2000:]
    advice = re.search(r"again with a lower learning rate: (python train\.py [^,]*),", errors[0])
    assert advice and "optim.lr=10 " in advice.group(1) + " ", errors[0]
    assert "checkpoints up to step " in errors[0] and "run.fork=true" in errors[0]
    code, output = train_cli(*shlex.split(advice.group(1))[2:])
    assert code == 0, output[-2000:]
    assert "done in" in output


@pytest.mark.slow
def test_resume_takes_a_run_folder_and_auto_finds_the_newest_run(train_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("older", "newer"):
        code, output = train_cli(*SMALL_OVERRIDES, "train.max_steps=2", f"run.name={name}")
        assert code == 0, output[-2000:]
        time.sleep(0.05)  # distinct checkpoint times
    newer = next((tmp_path / "runs").glob("newer-*"))
    code, output = train_cli("run.resume=auto", "train.max_steps=4")
    assert code == 0 and f"resumed from runs/{newer.name}/" in output, output[-2000:]
    assert last_progress(tmp_path / "runs" / newer.name)["global_step"] == 4
    older = next((tmp_path / "runs").glob("older-*"))
    code, output = train_cli(f"run.resume={older}", "train.max_steps=3")
    assert code == 0 and last_progress(older)["global_step"] == 3, output[-2000:]
    code, output = train_cli(f"run.resume={tmp_path / 'nothing-here'}")
    assert code != 0 and len(error_lines(output)) == 1 and "does not exist" in output


def write_class_folders(root: Path, classes: list[str]) -> None:
    for split, count in (("train", 8), ("val", 2)):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for number in range(count):
                shade = (40 * index + 5 * number) % 256
                Image.new("RGB", (12, 12), (shade, 255 - shade, 0)).save(folder / f"{number}.png")


@pytest.mark.slow
@pytest.mark.parametrize("change", ["renamed", "reordered"])
def test_resume_refuses_data_whose_classes_changed_naming_them(train_cli, tmp_path, change):
    data, run_dir = tmp_path / "data", tmp_path / "run"
    write_class_folders(data, ["cat", "dog", "fox"])
    folder_data = ("data.dataset=imagefolder", f"data.root={data}", "data.image_size=8")
    settings = (*SMALL_OVERRIDES, *folder_data, "data.batch_size=4", "train.max_steps=2")
    assert train_cli(*settings, f"run.dir={run_dir}")[0] == 0
    before = snapshot(run_dir)
    for split in ("train", "val"):
        if change == "renamed":
            (data / split / "fox").rename(data / split / "wolf")
        else:  # the same names, sorted differently: "cat" is now last
            (data / split / "cat").rename(data / split / "zebra_cat")
    code, output = train_cli(f"run.resume={run_dir}", "train.max_steps=4")
    errors = error_lines(output)
    assert code == 2 and len(errors) == 1, output[-2000:]
    if change == "renamed":
        assert "missing from the data: fox" in errors[0]
        assert "not in the checkpoint: wolf" in errors[0]
    else:
        assert "zebra_cat" in errors[0] and "cat" in errors[0]
    after = snapshot(run_dir)
    for lock in [path for path in after if path.name == "run.lock"]:
        del before[lock], after[lock]  # names the last holder: the refused run
    assert after == before
    assert last_progress(run_dir)["global_step"] == 2


def start_training(run_dir: Path, env: dict, *settings: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *SMALL_OVERRIDES, *settings, f"run.dir={run_dir}"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(
    subprocess_env, train_cli, tmp_path
):
    """Two real processes on one run folder: the second exits 2 at once with one line naming
    the first (pid, host); so does a resume from the live run's last.pt. After a SIGKILL of
    the first, the kernel has released its lock: the run resumes."""
    run_dir = tmp_path / "run"
    first = start_training(run_dir, subprocess_env, "train.epochs=1000", "run.save_every_steps=1")
    try:
        wait_for_file(run_dir / CHECKPOINTS / "last.pt", first, timeout=120)
        for second_settings in (("train.epochs=1000",), ("run.resume=auto",)):
            code, output = train_cli(*SMALL_OVERRIDES, *second_settings, f"run.dir={run_dir}")
            errors = error_lines(output)
            assert code == 2 and len(errors) == 1, output[-2000:]
            assert f"pid {first.pid} on " in errors[0] and "in use by another run" in errors[0]
        code, output = train_cli(f"run.resume={run_dir / CHECKPOINTS / 'last.pt'}")
        assert code == 2 and f"pid {first.pid}" in error_lines(output)[0], output[-2000:]
        assert first.poll() is None, "the first run was disturbed"
    finally:
        first.kill()
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    steps = newest_step(run_dir)  # the kill may have come between a save and last.pt's switch
    code, output = train_cli(f"run.resume={run_dir}", f"train.max_steps={steps + 1}")
    assert code == 0, output[-2000:]
    assert last_progress(run_dir)["global_step"] == steps + 1


def test_a_failed_start_leaves_no_run_folder_behind(train_cli, tmp_path):
    run_dir = tmp_path / "run"
    code, output = train_cli(
        *SMALL_OVERRIDES,
        "data.dataset=imagefolder",
        f"data.root={tmp_path / 'missing'}",
        f"run.dir={run_dir}",
    )
    assert code == 2 and len(error_lines(output)) == 1, output[-2000:]
    assert not run_dir.exists()
    assert os.listdir(tmp_path) == []


# The checkpoint is the truth; the run folder's config.yaml and normalization.json are records.


def image_settings(images: Path, *more: str) -> tuple[str, ...]:
    """The small config on image files (whose statistics are computed)."""
    images_there = ("data.dataset=imagefolder", "data.image_size=16", f"data.root={images}")
    return (*SMALL_OVERRIDES, *images_there, "data.batch_size=4", "train.epochs=3", *more)


def image_run(train_cli, tmp_path: Path) -> Path:
    """A run on image files stopped at step 2."""
    write_images(tmp_path / "images", {"a": 12, "b": 12})
    run_dir = tmp_path / "run"
    settings = image_settings(tmp_path / "images", "train.max_steps=2", f"run.dir={run_dir}")
    code, output = train_cli(*settings)
    assert code == 0, output[-2000:]
    return run_dir


def checkpoint_stats(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / CHECKPOINTS / "last.pt")["normalization"]


def warnings_naming(output: str, name: str) -> list[str]:
    return [line for line in output.splitlines() if "WARNING" in line and name in line]


@pytest.mark.slow
@pytest.mark.parametrize(
    "record",
    [
        b'{"mean": [0.9, 0.9, 0.9], "std": [0.01, 0.01, 0.01]}',  # another run's, say
        b'{"mean": [0.5, 0.5], "std": [0.2, 0.2]}',  # another number of channels
        b'{"mean": [NaN, 0.5, 0.5], "std": [0.2, 0.2, 0.0]}',
        b"\x00\xff not json",
        b"[1, 2, 3]",
        b"",
    ],
)
def test_a_resumed_run_normalises_with_its_checkpoint_not_the_folder_record(
    train_cli, tmp_path, record
):
    run_dir = image_run(train_cli, tmp_path)
    saved = checkpoint_stats(run_dir)
    (run_dir / "normalization.json").write_bytes(record)
    code, output = train_cli(f"run.resume={run_dir}", "train.max_steps=4")
    assert code == 0 and "Traceback" not in output, output[-2000:]
    (warning,) = warnings_naming(output, "normalization.json")
    assert "those of its checkpoint" in warning and "run.fork=true" in warning
    assert checkpoint_stats(run_dir) == saved  # the steps after the resume used them too
    assert json.loads((run_dir / "normalization.json").read_text()) == saved  # the record


@pytest.mark.slow
def test_an_unchanged_record_costs_no_warning_and_a_missing_one_is_written_again(
    train_cli, tmp_path
):
    run_dir = image_run(train_cli, tmp_path)
    code, output = train_cli(f"run.resume={run_dir}", "train.max_steps=3")
    assert code == 0 and not warnings_naming(output, str(run_dir)), output[-2000:]
    (run_dir / "normalization.json").unlink()
    code, output = train_cli(f"run.resume={run_dir}", "train.max_steps=4")
    assert code == 0 and not warnings_naming(output, str(run_dir)), output[-2000:]
    assert json.loads((run_dir / "normalization.json").read_text()) == checkpoint_stats(run_dir)


@pytest.mark.slow
def test_a_fresh_run_computes_its_statistics_and_never_reads_a_record_left_behind(
    train_cli, tmp_path
):
    """A run whose checkpoints are gone (pruned, or it failed before its first) left its
    normalization.json: a fresh start on other images computes theirs."""
    run_dir = image_run(train_cli, tmp_path)
    first = json.loads((run_dir / "normalization.json").read_text())
    shutil.rmtree(run_dir / CHECKPOINTS)
    other = tmp_path / "other"
    write_images(other, {"a": 30, "b": 6}, first=500)
    code, output = train_cli(*image_settings(other, f"run.dir={run_dir}", "run.resume=auto"))
    assert code == 0, output[-2000:]
    second = json.loads((run_dir / "normalization.json").read_text())
    assert second != first and second == checkpoint_stats(run_dir)
    assert "computed from" in output


def with_edit(saved: dict, edit: dict) -> dict:
    return {**saved, **{key: {**saved.get(key, {}), **value} for key, value in edit.items()}}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "named", "command"),
    [
        (
            {"optim": {"lr": 0.5}},
            "optim.lr: 0.5 in the file, 0.01 used",
            "run.fork=true optim.lr=0.5",
        ),
        (
            {"data": {"num_workers": 3}},
            "data.num_workers: 3 in the file, 0 used",
            "data.num_workers=3",
        ),
        ({"data": {"flip": 1}}, "data.flip: 1 in the file, true used", "data.flip=1"),
        ({"extra": {"key": 1}}, "extra.key: 1 in the file, not a setting", "not settings"),
    ],
)
def test_an_edited_config_yaml_says_the_checkpoint_settings_are_used_and_how_to_change(
    train_cli, tmp_path, edit, named, command
):
    run_dir = image_run(train_cli, tmp_path)
    config = run_dir / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump(with_edit(saved, edit)))
    code, output = train_cli(f"run.resume={run_dir}", "train.max_steps=3")
    assert code == 0, output[-2000:]
    (warning,) = warnings_naming(output, "config.yaml")
    assert named in warning and command in warning, warning
    assert "checkpoint's settings are used" in warning
    rewritten = yaml.safe_load(config.read_text())
    assert rewritten == with_edit(saved, {"run": rewritten["run"], "train": rewritten["train"]})
    assert last_progress(run_dir)["global_step"] == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "content", [b"optim: [unclosed\n", b"\xff\xfe\x00", b"- a list\n", b"a: 1\na: 2\n"]
)
def test_an_unreadable_config_yaml_is_one_warning_and_the_run_goes_on(train_cli, tmp_path, content):
    run_dir = image_run(train_cli, tmp_path)
    (run_dir / "config.yaml").write_bytes(content)
    code, output = train_cli(f"run.resume={run_dir}", "train.max_steps=3")
    assert code == 0 and "Traceback" not in output, output[-2000:]
    (warning,) = warnings_naming(output, "config.yaml")
    assert "cannot be read" in warning and "settings of its checkpoint" in warning
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 0.01
