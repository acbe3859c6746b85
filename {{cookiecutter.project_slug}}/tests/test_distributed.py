"""DistributedDataParallel: a two-process torchrun job, and the single-process fallbacks."""

import torch
from torch import nn

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


def test_torchrun_with_two_processes(run_python, small_overrides, tmp_path, read_metrics):
    run_dir = tmp_path / "ddp"
    result = run_python(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "train.py",
        *small_overrides,
        "data.val_size=63",  # odd: each validation image must count once, none padded in
        f"run.dir={run_dir}",
        timeout=300,
        env={"CUDA_VISIBLE_DEVICES": ""},  # two CPU processes over gloo, even on a GPU machine
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "world size 2" in result.stdout
    rows = read_metrics(run_dir)
    assert [row["epoch"] for row in rows] == ["0"]  # one row per epoch, from rank 0 only
    correct = float(rows[0]["val_acc"]) * 63
    assert abs(correct - round(correct)) < 1e-3, "validation did not count 63 images"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    # 256 images over 2 processes with batches of 32: 4 optimizer steps per epoch.
    assert checkpoint["progress"]["global_step"] == 4
    assert not any(key.startswith("module.") for key in checkpoint["model"])
    assert (run_dir / "checkpoints" / "best.pt").is_file()


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
        train_seen += [index for batch in batches for index in batch]
        val_loader = build_loader(data.val, cfg, train=False, **shard)
        val_seen += [index for batch in epoch_batch_sampler(val_loader) for index in batch]
    assert sorted(train_seen) == list(range(64))  # disjoint halves of one shuffled order
    assert sorted(val_seen) == list(range(21))  # every validation image once, no padding
