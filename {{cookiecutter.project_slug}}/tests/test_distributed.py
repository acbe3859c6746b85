"""DistributedDataParallel: two-process torchrun jobs (one killed and resumed), and the
single-process fallbacks."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.config import DataConfig
from {{ cookiecutter.package_name }}.data import (
    build_datasets,
    build_loader,
    epoch_batch_sampler,
)
from {{ cookiecutter.package_name }}.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    wrap_model,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
# Two CPU processes over gloo, even on a GPU machine.
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}
# 256 images over 2 processes in batches of 32: 4 optimizer steps per epoch, 8 in all.
# An odd validation set: each image must count once, none padded in.
DDP_SETTINGS = (
    "data.val_size=63",
    "train.epochs=2",
    "model.dropout=0.2",
    "run.save_every_steps=2",
)
KILL_AT = "step:7"  # inside epoch 1, one step after the checkpoint of step 6


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, small_overrides, subprocess_env):
    """Two torchrun jobs side by side: one uninterrupted, one whose ranks SIGKILL
    themselves at KILL_AT. Returns (root, {name: CompletedProcess})."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "tmp").mkdir()  # what killed processes leave behind stays in here
    commands = {
        "straight": [*TORCHRUN, "train.py"],
        "killed": [*TORCHRUN, "tests/kill_driver.py", "once", KILL_AT],
    }
    processes = {
        name: subprocess.Popen(
            [sys.executable, *command, *small_overrides, *DDP_SETTINGS, f"run.dir={root / name}"],
            cwd=PROJECT_ROOT,
            env={**subprocess_env, **NO_GPU, "TMPDIR": str(root / "tmp")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, command in commands.items()
    }
    results = {}
    for name, process in processes.items():
        try:
            stdout, stderr = process.communicate(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        results[name] = subprocess.CompletedProcess(
            process.args, process.returncode, stdout, stderr
        )
    return root, results


def test_torchrun_with_two_processes(two_process_runs, read_metrics):
    root, results = two_process_runs
    result = results["straight"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "world size 2" in result.stdout
    run_dir = root / "straight"
    rows = read_metrics(run_dir)
    assert [row["epoch"] for row in rows] == ["0", "1"]  # one row per epoch, from rank 0 only
    for row in rows:
        correct = float(row["val_acc"]) * 63
        assert abs(correct - round(correct)) < 1e-3, "validation did not count 63 images"
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["progress"]["global_step"] == 8
    assert not any(key.startswith("module.") for key in checkpoint["model"])
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["progress"]["global_step"] in (4, 8)


def test_torchrun_job_killed_mid_epoch_resumes_exactly(
    two_process_runs, run_python, small_overrides, assert_same_run
):
    root, results = two_process_runs
    killed = results["killed"]
    assert killed.returncode != 0, killed.stdout[-3000:]
    run_dir = root / "killed"
    steps = sorted(path.name for path in (run_dir / "checkpoints").glob("step-*.pt"))
    assert steps[-1] == "step-00000006.pt", (steps, killed.stderr[-3000:])

    resumed = run_python(
        *TORCHRUN,
        "train.py",
        *small_overrides,
        *DDP_SETTINGS,
        f"run.dir={run_dir}",
        "run.resume=auto",
        timeout=300,
        env={**NO_GPU, "TMPDIR": str(root / "tmp")},
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step-00000006.pt'}" in resumed.stdout
    assert results["straight"].returncode == 0
    assert_same_run(root / "straight", run_dir)


def test_without_a_process_group_everything_is_one_process(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed(timeout_s=5)
    assert context == DistributedContext() and context.is_main and not context.enabled
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed(timeout_s=5).world_size == 1
    assert not torch.distributed.is_initialized()


def test_reductions_pass_values_through_without_a_process_group():
    totals = torch.tensor([3.5, 2.0, 7.0], dtype=torch.float64)
    reduced = all_reduce_sum(totals)
    assert torch.equal(reduced, torch.tensor([3.5, 2.0, 7.0], dtype=torch.float64))
    assert reduced.dtype == totals.dtype
    marker = {"run_dir": "runs/x"}
    assert broadcast_object(marker) is marker
    barrier()  # returns at once


def test_wrap_model_leaves_a_single_process_model_alone():
    model = nn.Linear(2, 2)
    assert wrap_model(model, torch.device("cpu"), DistributedContext()) is model


def test_two_ranks_split_training_and_validation_data():
    cfg = DataConfig(train_size=64, val_size=21, image_size=8, batch_size=8)
    data = build_datasets(cfg, seed=0)
    train_seen, val_seen = [], []
    for rank in range(2):
        shard = dict(seed=0, rank=rank, world_size=2)
        train_loader = build_loader(data.train, cfg, train=True, **shard)
        batches = epoch_batch_sampler(train_loader)
        batches.set_epoch(1)
        assert batches.batches_per_epoch == 64 // 2 // 8
        train_seen += [index for batch in batches for index in batch.tolist()]
        val_loader = build_loader(data.val, cfg, train=False, **shard)
        val_seen += [i for batch in epoch_batch_sampler(val_loader) for i in batch.tolist()]
    assert sorted(train_seen) == list(range(64))  # disjoint halves of one shuffled order
    assert sorted(val_seen) == list(range(21))  # every validation image once, no padding
