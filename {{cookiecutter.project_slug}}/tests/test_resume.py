"""Fault tolerance: exact resume after SIGKILL, kills during saves, stop signals, full disk,
NaN losses and damaged checkpoints.

The kills are exact: tests/kill_driver.py patches the training code of its own process so
that it SIGKILLs itself at a chosen point (no timer races), and forks every run segment
from one process, which imports torch once for all of them.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import wait_for_file
from PIL import Image

from {{ cookiecutter.package_name }}.checkpoint import CheckpointManager, load_checkpoint
from {{ cookiecutter.package_name }}.stopping import GracefulStop, active_stop
from {{ cookiecutter.package_name }}.train import main, run

# Left out of the quick subset (pytest -m "not slow"): every test here kills, stops and resumes
# whole training runs.
pytestmark = pytest.mark.slow

DRIVER = Path(__file__).resolve().parent / "kill_driver.py"
PROJECT_ROOT = DRIVER.parent.parent

# Three epochs of 8 steps (256 images, batches of 32), a checkpoint every 2 steps; dropout
# makes the result depend on the restored RNG state, the cosine schedule (stepped per
# batch, with warmup) on the restored scheduler.
EPOCHS = ("train.epochs=3", "model.dropout=0.2", "run.save_every_steps=2")
STEPS = 24
WORKERS = {0: "data.num_workers=0", 2: "data.num_workers=2"}

# name -> (workers, the kill point of each interrupted segment). Every run is finished by a
# last segment with run.resume=auto, and compared to the uninterrupted run "straight".
SHAPE_RUNS = {
    "straight": (0, []),
    "straight-2-workers": (2, []),
    # The first checkpoint would be written at step 2: the resume starts from scratch.
    "before-first-checkpoint": (0, ["save_before:2"]),
    # Epoch 0's metrics row is written but not its checkpoint: resumed from step 6, the
    # run must not write that row twice.
    "end-of-epoch-before-save": (2, ["save_before:8"]),
    "end-of-epoch-after-save": (0, ["save_after:16"]),
    "mid-epoch": (0, ["step:11"]),
    "mid-epoch-2-workers": (2, ["step:11"]),
    "twice-in-one-epoch": (2, ["step:11", "step:13"]),
    "between-optimizer-and-scheduler-step": (0, ["scheduler:13"]),
}
# The step files on disk right after each kill: (newest step file, or None).
NEWEST_AFTER_KILL = {
    "before-first-checkpoint": [None],
    "end-of-epoch-before-save": ["step-00000006.pt"],
    "end-of-epoch-after-save": ["step-00000016.pt"],
    "mid-epoch": ["step-00000010.pt"],
    "mid-epoch-2-workers": ["step-00000010.pt"],
    "twice-in-one-epoch": ["step-00000010.pt", "step-00000012.pt"],
    "between-optimizer-and-scheduler-step": ["step-00000012.pt"],
}
# Images read from files, with random crops and flips: 24 images in batches of 8 make 3
# steps per epoch; the kill at step 5 falls inside epoch 1, one step after a checkpoint.
IMAGE_SETTINGS = (
    "data.dataset=imagefolder",
    "data.image_size=16",
    "data.batch_size=8",
    "train.epochs=3",
    "run.save_every_steps=2",
)
IMAGE_RUNS = {
    "images-straight": (0, []),
    "images-straight-2-workers": (2, []),
    "images-mid-epoch-2-workers": (2, ["step:5"]),
}
# The same images decoded once into memory (data.cache), augmented a batch at a time.
CACHED_RUNS = {
    "cached-straight": (0, []),
    "cached-mid-epoch-2-workers": (2, ["step:5"]),
}


def write_random_images(root: Path) -> None:
    """root/{train,val}/{a,b}/*.png: noise images, so every crop and flip changes the input."""
    noise = random.Random(0)
    for split, count in (("train", 12), ("val", 4)):
        for name in ("a", "b"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                size = (20 + index % 3, 18 + index % 2)
                pixels = noise.randbytes(size[0] * size[1] * 3)
                Image.frombytes("RGB", size, pixels).save(folder / f"{index}.png")


def segments(base: list[str], kills: list[str]) -> list[dict]:
    """The interrupted segments, then one that resumes (or, without kills, the whole run)."""
    parts = [{"argv": base, "kill": kill} for kill in kills[:1]]
    parts += [{"argv": [*base, "run.resume=auto"], "kill": kill} for kill in kills[1:]]
    parts.append({"argv": [*base, "run.resume=auto"] if kills else base, "kill": "none"})
    return parts


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory, small_overrides, subprocess_env):
    """Every run of SHAPE_RUNS and IMAGE_RUNS, trained by one driver process: (root, result)."""
    root = tmp_path_factory.mktemp("killed")
    images = root / "images"
    write_random_images(images)
    runs = {}
    for name, (workers, kills) in SHAPE_RUNS.items():
        base = [*small_overrides, *EPOCHS, WORKERS[workers], f"run.dir={root / name}"]
        runs[name] = {"dir": str(root / name), "segments": segments(base, kills)}
    for name, (workers, kills) in {**IMAGE_RUNS, **CACHED_RUNS}.items():
        base = [
            *small_overrides,
            *IMAGE_SETTINGS,
            f"data.root={images}",
            WORKERS[workers],
            f"data.cache={str(name in CACHED_RUNS).lower()}",
            f"run.dir={root / name}",
        ]
        runs[name] = {"dir": str(root / name), "segments": segments(base, kills)}
    (root / "logs").mkdir()
    plan = {"runs": runs, "logs": str(root / "logs"), "result": str(root / "result.json")}
    (root / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    drive(subprocess_env, root, "plan", str(root / "plan.json"), timeout=300)
    return root, json.loads((root / "result.json").read_text(encoding="utf-8"))


def segment_log(root: Path, name: str, index: int) -> str:
    return (root / "logs" / f"{name}-{index}.log").read_text(encoding="utf-8")


def check_fates(root: Path, result: dict, name: str, kills: list[str]) -> None:
    """The segments with a kill point died of SIGKILL; the last one finished the run."""
    fates = [outcome["fate"] for outcome in result[name]]
    expected = [["signal", signal.SIGKILL]] * len(kills) + [["exit", 0]]
    assert fates == expected, segment_log(root, name, len(fates) - 1)[-3000:]


@pytest.mark.parametrize("name", [name for name in SHAPE_RUNS if name != "straight"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(killed_runs, assert_same_run, name):
    root, result = killed_runs
    kills = SHAPE_RUNS[name][1]
    check_fates(root, result, "straight", [])
    check_fates(root, result, name, kills)
    # Each kill happened where planned: the newest step file on disk shows it.
    for index, newest in enumerate(NEWEST_AFTER_KILL.get(name, [])):
        files = result[name][index]["step_files"]
        assert (files[-1] if files else None) == newest, files
        resumed = segment_log(root, name, index + 1)
        if newest is None:
            assert "no checkpoint" in resumed and "starting fresh" in resumed
        else:
            assert f"resumed from {root / name / 'checkpoints' / newest}" in resumed
    assert_same_run(root / "straight", root / name)
    progress = load_checkpoint(root / name / "checkpoints" / "last.pt")["progress"]
    assert (progress["global_step"], progress["epoch"], progress["seen"]) == (STEPS, 3, 0)


@pytest.mark.parametrize("name", [name for name in IMAGE_RUNS if name != "images-straight"])
def test_augmented_images_resume_exactly_with_any_worker_count(killed_runs, assert_same_run, name):
    root, result = killed_runs
    check_fates(root, result, "images-straight", [])
    check_fates(root, result, name, IMAGE_RUNS[name][1])
    assert_same_run(root / "images-straight", root / name)
    assert load_checkpoint(root / name / "checkpoints" / "last.pt")["progress"]["global_step"] == 9


def test_cached_images_resume_exactly(killed_runs, assert_same_run):
    root, result = killed_runs
    check_fates(root, result, "cached-straight", [])
    check_fates(root, result, "cached-mid-epoch-2-workers", ["step:5"])
    resumed = segment_log(root, "cached-mid-epoch-2-workers", 1)
    assert "data.cache: 24 train + 8 val images decoded into memory" in resumed
    assert "resumed from" in resumed and "epoch 2, batch 1, step 4" in resumed
    assert_same_run(root / "cached-straight", root / "cached-mid-epoch-2-workers")


def test_augmentations_differ_between_epochs_and_samples(killed_runs):
    """Guards the test above: identical runs must not come from augmentation being off."""
    from {{ cookiecutter.package_name }}.config import DataConfig
    from {{ cookiecutter.package_name }}.data import build_datasets, build_loader

    root, _ = killed_runs
    cfg = DataConfig(
        dataset="imagefolder",
        root=str(root / "images"),
        image_size=16,
        batch_size=128,
        num_workers=0,
        cache=False,
    )
    data = build_datasets(cfg, seed=0)
    loader = build_loader(data.train, cfg, train=True, seed=0)
    dataset = loader.dataset
    assert not torch.equal(dataset[(0, 3)][0], dataset[(1, 3)][0])  # epochs differ
    assert torch.equal(dataset[(0, 3)][0], dataset[(0, 3)][0])  # seeded: repeatable
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(dataset[(0, 3)][0], dataset[(0, 3)][0])


def drive(subprocess_env, folder: Path, *args: str, timeout: int = 180) -> None:
    """Run tests/kill_driver.py with `args`; fail with its output if it fails itself.

    Its temporary files go to `folder`/tmp: killed processes cannot clean up after
    themselves (multiprocessing's pymp-* folders, for instance).
    """
    (folder / "tmp").mkdir(exist_ok=True)
    completed = subprocess.run(
        [sys.executable, str(DRIVER), *args],
        cwd=PROJECT_ROOT,
        # CUDA stays out of the forked children; TMPDIR keeps their litter in `folder`.
        env={**subprocess_env, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(folder / "tmp")},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


def check_folder_is_clean(folder: Path) -> None:
    """No temporary file (ours are .NAME.PID.tmp, the safetensors library's .tmpXXXXXX),
    and no part of a checkpoint without its .pt."""
    names = sorted(path.name for path in folder.iterdir())
    assert not [name for name in names if name.startswith(".")], names
    for name in names:
        assert name.split(".")[0] + ".pt" in names, f"{name} is left without its .pt"


# Steps of 4 images: quick, so that much of the time goes to saving, after every step;
# keep_last=2 makes every save also delete files.
SAVE_OFTEN = (
    "data.batch_size=4",
    "run.save_every_steps=1",
    "run.keep_last=2",
    "run.resume=auto",
)
KILLS = 22


def test_random_kills_during_training_and_saving_never_lose_the_checkpoint(
    tmp_path, make_config, small_overrides, subprocess_env
):
    """A run that saves after every step is SIGKILLed at random moments, again and again;
    each time, the newest checkpoint on disk must load, and progress never goes back."""
    run_dir = tmp_path / "run"
    settings = [*small_overrides, *SAVE_OFTEN, "train.epochs=1000", f"run.dir={run_dir}"]
    result_file = tmp_path / "kills.json"
    drive(subprocess_env, tmp_path, "chaos", str(result_file), str(KILLS), "20260101", *settings)
    records = json.loads(result_file.read_text(encoding="utf-8"))
    kills = sum(record["fate"] == ["signal", signal.SIGKILL] for record in records)
    in_save = sum(record["in_save"] for record in records)
    orphans = sum(bool(record["orphans"]) for record in records)
    summary = f"{kills} kills, {in_save} inside a save, {orphans} left temporary files: "
    summary += json.dumps(records)[:4000]
    assert kills >= 20, summary
    # Half the time goes to saving: if hardly any kill hit a save, this proves nothing.
    assert in_save >= 2, summary
    assert not [record for record in records if "error" in record], summary
    # The newest file on disk is always whole: nothing had to be skipped.
    assert all(record["loaded"] == record["newest"] for record in records), summary
    steps = [record["step"] or 0 for record in records]
    assert steps == sorted(steps) and steps[-1] > 0, summary  # progress never goes back

    # A resume continues from there, and cleans up the orphans.
    target = steps[-1] + 2
    assert main(make_config(*SAVE_OFTEN, "train.epochs=1000", f"train.max_steps={target}")) == 0
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["global_step"] == target
    check_folder_is_clean(run_dir / "checkpoints")


def test_a_kill_before_any_file_operation_of_a_save_loses_nothing(
    tmp_path, make_config, small_overrides, subprocess_env, assert_same_run
):
    """Each run resumes, trains one step and is killed inside its save, before the 1st,
    2nd, 3rd ... fsync/replace/link/unlink, until a save completes and the run finishes:
    every time the newest checkpoint loads, and the result equals an uninterrupted run."""
    run_dir = tmp_path / "run"
    # 3 epochs of 16 steps: some kills fall into epoch-end saves, which also link best.*.
    common = (*SAVE_OFTEN, "data.train_size=64", "train.epochs=3", "model.dropout=0.2")
    settings = [*small_overrides, *common, f"run.dir={run_dir}"]
    result_file = tmp_path / "operations.json"
    drive(subprocess_env, tmp_path, "save-ops", str(result_file), *settings)
    records = json.loads(result_file.read_text(encoding="utf-8"))
    summary = json.dumps(records)[:4000]
    fates = [record["fate"] for record in records]
    assert fates == [["signal", signal.SIGKILL]] * (len(records) - 1) + [["exit", 0]], summary
    assert len(records) > 10, summary  # a save does more than ten file operations
    assert not [record for record in records if "error" in record], summary
    assert all(record["loaded"] == record["newest"] for record in records), summary
    steps = [record["step"] for record in records]
    assert steps == sorted(steps) and steps[0] >= 2, summary
    straight = tmp_path / "straight"
    assert main(make_config(*common, run_dir=straight)) == 0
    assert_same_run(straight, run_dir)

    # Every file of the folder, and last.pt on its own, must be usable after any kill.
    problems = [
        f"after a kill before file operation {record['index']}, last.pt does not load: "
        f"{record['last_error']}"
        for record in records
        if "last_error" in record
    ]
    folder = run_dir / "checkpoints"
    problems += [
        f"{path.name} is left without its .pt (a kill while old step files were deleted)"
        for path in sorted(folder.glob("[!.]*"))
        if not (folder / (path.name.split(".")[0] + ".pt")).is_file()
    ]
    problems += [f"temporary file {path.name} is left" for path in folder.glob(".*")]
    assert not problems, "\n".join(problems)


# SIGHUP: the terminal or ssh session of the run closed.
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)]
)
def test_stop_signal_saves_and_exits_with_128_plus_the_signal(
    make_config, small_overrides, subprocess_env, tmp_path, signum, code, sighup_at_its_default
):
    run_dir = tmp_path / "run"
    settings = (
        "train.epochs=6",
        "run.save_every_steps=2",
        "model.dropout=0.2",
        "sched.name=none",
    )
    process = subprocess.Popen(
        [sys.executable, "train.py", *small_overrides, *settings, f"run.dir={run_dir}"],
        cwd=PROJECT_ROOT,
        env=subprocess_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_file(run_dir / "checkpoints" / "last.pt", process, timeout=180)
        process.send_signal(signum)
        output, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == code, output[-3000:]
    assert signal.Signals(signum).name in output
    assert f"continue with: python train.py run.resume={run_dir}" in output
    stopped = load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]
    assert 0 < stopped["global_step"] < 6 * 8, "the run was not stopped early"

    # Resuming finishes the run, with the same result as a run never stopped.
    assert main(make_config(*settings, "run.resume=auto", run_dir=run_dir)) == 0
    assert main(make_config(*settings, run_dir=tmp_path / "straight")) == 0
    expected = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    actual = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert actual["progress"] == expected["progress"]
    for key, tensor in expected["model"].items():
        assert torch.equal(actual["model"][key], tensor), key


def test_a_stop_requested_before_the_first_step_ends_the_run_cleanly(make_config, tmp_path):
    """A Ctrl-C during set-up (or one that a sweep got between its trials) is a request to
    stop like any other: the run stops before its first step, with a checkpoint to resume."""
    outer = GracefulStop()  # as a sweep holds the signals around its trials
    try:
        outer.received = signal.SIGINT
        assert main(make_config(run_dir=tmp_path / "run")) == 130
        assert active_stop() is outer, "the run did not give the signals back"
    finally:
        outer.restore()
    progress = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["progress"]
    assert progress["global_step"] == 0
    assert main(make_config("run.resume=auto", run_dir=tmp_path / "run")) == 0


def test_a_signal_inside_a_nested_graceful_stop_reaches_the_outer_one():
    assert active_stop() is None
    outer = GracefulStop()
    try:
        inner = GracefulStop()
        try:
            assert active_stop() is inner and inner.received is None
            signal.raise_signal(signal.SIGTERM)  # handled at once, in this main thread
            assert inner.received == signal.SIGTERM
        finally:
            inner.restore()
        assert active_stop() is outer and outer.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C quits at once
            signal.raise_signal(signal.SIGINT)
    finally:
        outer.restore()
    assert active_stop() is None


def test_sigusr1_is_a_stop_request_like_sigterm():
    """SIGUSR1 is the notice a cluster sends before the time limit (scripts/slurm.sbatch):
    the run saves and stops, and exits with 128 + 10 (train.report_end)."""
    stop = GracefulStop()
    try:
        signal.raise_signal(signal.SIGUSR1)  # handled at once, in this main thread
        assert stop.received == signal.SIGUSR1
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_sighup_is_a_stop_request_unless_the_run_was_started_to_ignore_it(sighup_at_its_default):
    """A closed terminal sends SIGHUP: the run saves and stops (129). Under `nohup`, which
    starts the process with SIGHUP ignored, the run goes on as nohup asks."""
    stop = GracefulStop()
    try:
        signal.raise_signal(signal.SIGHUP)  # handled at once, in this main thread
        assert stop.received == signal.SIGHUP
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        stop = GracefulStop()
        signal.raise_signal(signal.SIGHUP)
        assert stop.received is None and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        stop.restore()
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def test_nan_loss_exits_1_naming_the_step_and_keeps_a_finite_checkpoint(
    make_config, tmp_path, capsys
):
    # An absurd learning rate: the weights explode within a few steps.
    cfg = make_config(
        "optim.name=sgd", "optim.lr=1e6", "run.save_every_steps=1", "run.keep_last=100"
    )
    assert run(cfg) == 1
    error = capsys.readouterr().err
    match = re.search(r"NaN or infinite\b.* optimizer step (\d+)", error)
    assert match, error
    bad_step = int(match.group(1))
    folder = tmp_path / "run" / "checkpoints"
    found = CheckpointManager(folder, is_main=False).load_newest_valid()
    assert found is not None, "no checkpoint was kept"
    last = load_checkpoint(folder / "last.pt")
    assert last["progress"]["global_step"] == found[1]["progress"]["global_step"] < bad_step
    assert last["progress"]["first_nonfinite_step"] == -1
    not_finite = [
        key
        for key, tensor in last["model"].items()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    assert not not_finite, (
        f"last.pt (step {last['progress']['global_step']}) has non-finite weights {not_finite}: "
        "resuming from it fails at once"
    )
    for state in last["optimizer"]["state"].values():
        assert all(
            torch.isfinite(value).all() for value in state.values() if value.is_floating_point()
        )


@pytest.mark.parametrize("damage", ["flipped_byte", "truncated"])
def test_resume_auto_skips_a_damaged_newest_checkpoint(make_config, tmp_path, capsys, damage):
    settings = ("run.save_every_steps=2", "model.dropout=0.2")
    assert main(make_config(*settings, "train.max_steps=4")) == 0
    folder = tmp_path / "run" / "checkpoints"
    newest = folder / "step-00000004.pt"
    content = bytearray(newest.read_bytes())
    if damage == "flipped_byte":
        content[len(content) // 2] ^= 0x01
    else:
        content = content[: len(content) - 100]
    newest.write_bytes(bytes(content))  # last.pt is the same file (a hard link)
    capsys.readouterr()

    resumed = make_config(*settings, "train.max_steps=6", "run.resume=auto")
    assert main(resumed) == 0
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "skipping a checkpoint" in output and str(newest) in output
    assert f"resumed from {folder / 'step-00000002.pt'}" in output
    straight = tmp_path / "straight"
    assert main(make_config(*settings, "train.max_steps=6", run_dir=straight)) == 0
    expected = load_checkpoint(straight / "checkpoints" / "last.pt")
    actual = load_checkpoint(folder / "last.pt")
    assert actual["progress"]["global_step"] == 6
    for key, tensor in expected["model"].items():
        assert torch.equal(actual["model"][key], tensor), key


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs mounted on tmp_path/"disk" (root only; skipped where mounting fails)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount command to create a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    attempt = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if attempt.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs CAP_SYS_ADMIN): {attempt.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_full_disk_fails_clearly_and_keeps_the_last_checkpoint(make_config, small_tmpfs, capsys):
    run_dir = small_tmpfs / "run"
    # Checkpoints of ~0.2 MB every step, none deleted: the 1 MiB disk fills up within epoch 0.
    cfg = make_config("run.save_every_steps=1", "run.keep_last=1000", run_dir=run_dir)
    assert run(cfg) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors and errors[-1].startswith("error: could not write "), errors[-3:]
    assert "run.resume=auto" in errors[-1]
    folder = run_dir / "checkpoints"
    assert not list(folder.glob(".*.tmp")), "temporary files were left on the full disk"
    found = CheckpointManager(folder, is_main=False).load_newest_valid()
    assert found is not None and found[1]["progress"]["global_step"] >= 1
    last = load_checkpoint(folder / "last.pt")
    assert last["progress"]["global_step"] == found[1]["progress"]["global_step"]
