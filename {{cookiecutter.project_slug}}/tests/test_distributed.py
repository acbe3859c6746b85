"""DistributedDataParallel: two-process torchrun jobs (the same result as one process, a
killed rank restarted by torchrun, a stalled rank), errors, and single-process fallbacks."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed
from conftest import write_images
from torch import nn

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.config import ConfigError, DataConfig, TrainConfig
from {{ cookiecutter.package_name }}.data import (
    GlobalBatchShardSampler,
    build_datasets,
    build_loader,
    epoch_batch_sampler,
)
from {{ cookiecutter.package_name }}.device import float32_precision
from {{ cookiecutter.package_name }}.distributed import (
    DistributedContext,
    StopVote,
    all_gather_object,
    all_reduce_sum,
    barrier,
    broadcast_object,
    describe_collective_failure,
    init_distributed,
    rank_seed,
    wrap_model,
)
from {{ cookiecutter.package_name }}.engine import Trainer, TrainState, train_one_epoch

PROJECT_ROOT = Path(__file__).resolve().parent.parent


TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
# Two CPU processes over gloo, even on a GPU machine.
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}
# 256 images over 2 processes in batches of 32: 4 optimizer steps per epoch, 8 in all.
# An odd validation set: each image must count once, none padded in. No dropout: its masks
# are drawn per rank, so no one-process run could repeat them.
DDP_SETTINGS = ("data.val_size=63", "train.epochs=2", "run.save_every_steps=2")
KILL_AT = "step:7"  # inside epoch 1, one step after the checkpoint of step 6
# The same global batch of 64 in one process: two micro-batches of 32, each exactly what
# one rank trains on (see GlobalBatchShardSampler).
ONE_PROCESS_SAME_GLOBAL_BATCH = ("train.grad_accum_steps=2",)
# What the two-process run may differ by from the one-process run (measured: 0.0 for the
# weights and the training loss; up to 0.01 for the validation loss). The batch norm
# running statistics come from rank 0's micro-batches only (DDP broadcasts rank 0's
# buffers), where one process updates them with both: they, and so the validation
# metrics, differ a little; the trained weights do not depend on them.
WEIGHT_TOLERANCE = 1e-6
VAL_LOSS_TOLERANCE = 0.05
BATCH_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
# The stalled job: when a rank stops answering, the other must fail within
# train.ddp_timeout_s + STALL_MARGIN_S. torchrun then sends the stalled rank SIGTERM and,
# as it does not react, SIGKILL after 30 s (torch 2.15 ignores --shutdown-timeout there).
STALL_TIMEOUT_S, STALL_MARGIN_S, TORCHRUN_KILL_GRACE_S = 5, 10, 30


def _start(command: list[str], cwd: Path, env: dict, output: Path) -> subprocess.Popen:
    """`python COMMAND` with stdout and stderr going to OUTPUT.out and OUTPUT.err (files,
    not pipes: nobody reads a pipe while the other jobs of the fixture run), in a process
    group of its own (see _end)."""
    with open(f"{output}.out", "w") as stdout, open(f"{output}.err", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, *command],
            cwd=cwd,
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    process.output = output
    return process


def _end(process: subprocess.Popen) -> None:
    """SIGKILL what is left of a job: torchrun and the ranks it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _finish(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        process.wait(timeout=timeout)
    finally:
        _end(process)
    stdout, stderr = (Path(f"{process.output}.{kind}").read_text() for kind in ("out", "err"))
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# /proc lets the test find the ranks of a torchrun job (its child processes).
HAS_PROC = Path("/proc/self/task").is_dir()


def _rank_process(job: subprocess.Popen, rank: int) -> int:
    """The pid of rank `rank` among the children of the torchrun process `job`."""
    children = Path(f"/proc/{job.pid}/task/{job.pid}/children").read_text(encoding="utf-8")
    for pid in children.split():
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environment:
            return int(pid)
    raise AssertionError(f"no rank {rank} among the children of torchrun: {children}")


def _stall_one_rank(job: subprocess.Popen, run_dir: Path, env: dict) -> dict:
    """Once `job` has saved a checkpoint, start a second writer on its run folder (it must
    be refused: "second_writer", with rank 0's pid), then SIGSTOP rank 1 and wait for the
    job to end.

    Returns the pid of the stopped rank, and the seconds from the stop until rank 0 logged
    its error and until the job ended ("error_s", "exit_s"; None if it did not happen)."""
    deadline = time.monotonic() + 200
    while not any((run_dir / "checkpoints").glob("step-*.pt")):  # training is under way
        if job.poll() is not None or time.monotonic() > deadline:
            return {"pid": 0, "error_s": None, "exit_s": None}
        time.sleep(0.1)
    second_writer = subprocess.run(
        [sys.executable, "train.py", f"run.resume={run_dir}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    rank_0 = _rank_process(job, 0)
    stopped = _rank_process(job, 1)
    os.kill(stopped, signal.SIGSTOP)  # it stops answering, without dying
    stalled_at, times = time.monotonic(), {"pid": stopped, "error_s": None, "exit_s": None}
    times.update(second_writer=second_writer, rank_0=rank_0)
    limit = stalled_at + STALL_TIMEOUT_S + STALL_MARGIN_S + TORCHRUN_KILL_GRACE_S + 30
    while job.poll() is None and time.monotonic() < limit:
        log = (run_dir / "train.log").read_text(encoding="utf-8")
        if times["error_s"] is None and "waited too long for another rank" in log:
            times["error_s"] = time.monotonic() - stalled_at
        time.sleep(0.1)
    if job.poll() is not None:
        times["exit_s"] = time.monotonic() - stalled_at
    return times


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, small_overrides, subprocess_env):
    """Four jobs side by side (on 2 cores, less time than one after another):
    - straight: an uninterrupted torchrun job, in ROOT/straight;
    - one: one process with the same global batch, in ROOT/one;
    - restarted: the straight job under `torchrun --max-restarts=1`, where rank 1 SIGKILLs
      itself at KILL_AT; started in ROOT without run.dir, so it lands in ROOT/runs/run-*;
    - stalled: a long job of which one rank is SIGSTOPped once it has saved a checkpoint,
      with train.ddp_timeout_s=STALL_TIMEOUT_S, in ROOT/stalled.
    Returns (ROOT, {name: CompletedProcess}, what _stall_one_rank measured).
    """
    root = tmp_path_factory.mktemp("ddp")
    (root / "tmp").mkdir()  # what killed processes leave behind stays in here
    env = {**subprocess_env, **NO_GPU, "TMPDIR": str(root / "tmp")}
    train = str(PROJECT_ROOT / "train.py")
    driver = str(PROJECT_ROOT / "tests" / "kill_driver.py")
    # name: (program and its first arguments, settings after the small overrides)
    commands = {
        "straight": ([*TORCHRUN, train], [*DDP_SETTINGS, f"run.dir={root / 'straight'}"]),
        "one": (
            [train],
            [*DDP_SETTINGS, *ONE_PROCESS_SAME_GLOBAL_BATCH, f"run.dir={root / 'one'}"],
        ),
        "restarted": (
            [*TORCHRUN, "--max-restarts=1", driver, "rank", "1", KILL_AT],
            DDP_SETTINGS,
        ),
    }
    commands["shards"] = ([*TORCHRUN, train], _one_validation_shard(root, env))
    if HAS_PROC:
        commands["stalled"] = (
            [*TORCHRUN, train],
            [
                "train.epochs=1000",
                "run.save_every_steps=1",
                f"train.ddp_timeout_s={STALL_TIMEOUT_S}",
                f"run.dir={root / 'stalled'}",
            ],
        )
    processes = {
        name: _start([*program, *small_overrides, *settings], root, env, root / name)
        for name, (program, settings) in commands.items()
    }
    try:
        stall = {"pid": 0}
        if "stalled" in processes:
            stall = _stall_one_rank(processes["stalled"], root / "stalled", env)
        results = {name: _finish(process) for name, process in processes.items()}
    finally:
        for process in processes.values():  # after an error above, leave nothing running
            _end(process)
    return root, results, stall


def _one_validation_shard(root: Path, env: dict) -> list[str]:
    """Shards whose validation split is one shard, fewer than the processes, and the settings
    that train on them."""
    write_images(root / "images", {"a": 12, "b": 12}, size=16)
    prepare = [sys.executable, str(PROJECT_ROOT / "prepare_shards.py"), str(root / "images")]
    subprocess.run([*prepare, str(root / "shards"), "--per-shard", "8"], env=env, check=True)
    shards = f"data.root={root / 'shards'}"
    return ["data.dataset=shards", shards, "train.epochs=1", f"run.dir={root / 'shards'}-run"]


def _output(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_with_two_processes(two_process_runs, read_metrics):
    root, results, _ = two_process_runs
    result = results["straight"]
    assert result.returncode == 0, _output(result)
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
    # Each rank's own random stream (e.g. for dropout) is saved, and the two differ.
    first, second = checkpoint["rng_per_rank"]
    assert torch.equal(first["torch"], checkpoint["rng"]["torch"])
    assert not torch.equal(first["torch"], second["torch"])


def test_a_process_without_validation_shards_validates_nothing_and_waits(
    two_process_runs, read_metrics
):
    """One validation shard, two processes: rank 1 has no validation batch. The job ends (it
    hung when validation ran the DDP wrapper, whose forward waits for the other process)."""
    root, results, _ = two_process_runs
    result = results["shards"]
    assert result.returncode == 0, _output(result)
    (row,) = read_metrics(root / "shards-run")
    assert 0 <= float(row["val_acc"]) <= 1


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(two_process_runs, read_metrics):
    root, results, _ = two_process_runs
    for name in ("one", "straight"):
        assert results[name].returncode == 0, _output(results[name])
    one = load_checkpoint(root / "one" / "checkpoints" / "last.pt")
    two = load_checkpoint(root / "straight" / "checkpoints" / "last.pt")
    assert one["progress"]["global_step"] == two["progress"]["global_step"] == 8
    weights = [name for name in one["model"] if not name.endswith(BATCH_NORM_STATISTICS)]
    assert len(weights) > 10, weights
    difference = max(
        (one["model"][name].double() - two["model"][name].double()).abs().max().item()
        for name in weights
    )
    assert difference <= WEIGHT_TOLERANCE, f"weights differ by {difference}"
    rows = zip(read_metrics(root / "one"), read_metrics(root / "straight"), strict=True)
    for row_one, row_two in rows:
        assert row_one["step"] == row_two["step"]
        assert abs(float(row_one["train_loss"]) - float(row_two["train_loss"])) <= 1e-6
        assert row_one["train_acc"] == row_two["train_acc"]  # summed over both ranks
        assert row_one["lr"] == row_two["lr"]
        assert abs(float(row_one["val_loss"]) - float(row_two["val_loss"])) <= VAL_LOSS_TOLERANCE


@pytest.mark.slow
def test_killed_rank_is_restarted_by_torchrun_and_the_job_ends_as_if_uninterrupted(
    two_process_runs, assert_same_run
):
    root, results, _ = two_process_runs
    restarted = results["restarted"]
    assert restarted.returncode == 0, _output(restarted)
    # The first attempt lost rank 1 at step 7; torchrun started both ranks again, and the
    # script found its own run folder and newest checkpoint without being told.
    assert "torchrun restart 1: continuing from the newest checkpoint" in restarted.stdout
    (run_dir,) = (root / "runs").glob("run-*")
    newest = run_dir.relative_to(root) / "checkpoints" / "step-00000006.pt"
    assert f"resumed from {newest}" in restarted.stdout
    assert results["straight"].returncode == 0
    assert_same_run(root / "straight", run_dir)
    straight = load_checkpoint(root / "straight" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    for rank in range(2):  # every rank took back its own random stream
        assert torch.equal(
            straight["rng_per_rank"][rank]["torch"], resumed["rng_per_rank"][rank]["torch"]
        )


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc to find the ranks of a job")
def test_a_stalled_rank_fails_the_job_within_the_timeout(two_process_runs):
    _, results, stall = two_process_runs
    stalled = results["stalled"]
    assert stall["pid"], _output(stalled)
    assert stalled.returncode != 0, _output(stalled)
    expected = f"waited too long for another rank (train.ddp_timeout_s={STALL_TIMEOUT_S})"
    assert expected in stalled.stderr, _output(stalled)
    assert stall["error_s"] is not None
    assert stall["error_s"] < STALL_TIMEOUT_S + STALL_MARGIN_S, stall  # the message says why
    assert stall["exit_s"] < STALL_TIMEOUT_S + STALL_MARGIN_S + TORCHRUN_KILL_GRACE_S, stall


@pytest.mark.slow
def test_rank_0_holds_the_run_folder_and_a_second_writer_is_refused(two_process_runs):
    _, results, stall = two_process_runs
    assert stall["pid"], _output(results["stalled"])
    second = stall["second_writer"]
    errors = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(errors) == 1, second.stdout[-2000:] + second.stderr
    assert f"pid {stall['rank_0']} on " in errors[0] and "in use by another run" in errors[0]


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
    cfg = DataConfig(train_size=64, val_size=21, image_size=8, batch_size=8, num_workers=0)
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


def test_each_rank_trains_on_its_own_slice_of_every_global_batch():
    """Rank r's batch i is the r-th part of the one-process run's global batch i, in order:
    the property that makes two processes equal one with grad_accum_steps=2."""
    length, batch = 70, 8  # 4 whole global batches of 16, then a ragged rest of 6
    orders_by_epoch = []
    for epoch in (0, 1):
        orders = []
        for rank, world_size in ((0, 1), (0, 2), (1, 2)):
            sampler = GlobalBatchShardSampler(length, batch, rank, world_size, seed=3)
            sampler.set_epoch(epoch)
            orders.append(list(sampler))
        alone, first, second = orders
        assert len(first) == len(second) == 35
        for start in range(0, 64, 2 * batch):
            step = start // 2
            assert alone[start : start + batch] == first[step : step + batch]
            assert alone[start + batch : start + 2 * batch] == second[step : step + batch]
        assert first[32:] + second[32:] == alone[64:]  # the rest, split evenly
        assert sorted(first + second) == list(range(length))
        orders_by_epoch.append(alone)
    assert orders_by_epoch[0] != orders_by_epoch[1], "set_epoch did not reshuffle"


def test_uneven_training_data_is_padded_like_distributed_sampler():
    shares = []
    for rank in range(3):
        sampler = GlobalBatchShardSampler(10, 2, rank, 3, seed=0)
        shares.append(list(sampler))
    assert [len(share) for share in shares] == [4, 4, 4]
    together = sorted(sum(shares, []))
    assert set(together) == set(range(10)) and len(together) == 12  # two repeated to pad


def test_accumulation_all_reduces_gradients_only_on_the_updating_micro_batch(tmp_path):
    """With grad_accum_steps=2, DDP's gradient all-reduce runs half as often (no_sync).

    A process group of one process, in this test process: DDP's reducer and communication
    hook run as they would with more."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        calls = {}
        for accumulation in (1, 2):
            torch.manual_seed(0)
            model = nn.parallel.DistributedDataParallel(nn.Linear(4, 3))
            reduced = []

            def count(state, bucket, reduced=reduced):
                reduced.append(bucket.index())
                future = torch.futures.Future()
                future.set_result(bucket.buffer())
                return future

            model.register_comm_hook(None, count)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
            batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(4)]
            cpu = torch.device("cpu")
            trainer = Trainer(
                model,
                optimizer,
                scheduler,
                step_scheduler_per_batch=False,
                precision=float32_precision(cpu),
                cfg=TrainConfig(grad_accum_steps=accumulation),
                device=cpu,
            )
            train_one_epoch(trainer, batches, len(batches), TrainState())
            calls[accumulation] = len(reduced)
        # wrap_model passes train.find_unused_parameters on (off unless asked for).
        two_ranks = DistributedContext(rank=0, world_size=2)
        for wanted in (False, True):
            wrapped = wrap_model(
                nn.Linear(4, 3), torch.device("cpu"), two_ranks, find_unused_parameters=wanted
            )
            assert isinstance(wrapped, nn.parallel.DistributedDataParallel)
            assert wrapped.find_unused_parameters is wanted
    finally:
        torch.distributed.destroy_process_group()
    assert calls[1] == 4 and calls[2] == 2, calls


@pytest.mark.parametrize(
    ("gloo_message", "reason"),
    [
        ("Application timeout caused pair closure", "waited too long for another rank"),
        (
            "[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 5000ms for recv "
            "operation to complete",
            "waited too long for another rank",
        ),
        (
            "[gloo/transport/tcp/pair.cc:534] Read error [127.0.0.1]:41234: Connection reset "
            "by peer",
            "lost the connection to another rank",
        ),
        ("Connection closed by peer [127.0.0.1]:29500", "lost the connection to another rank"),
    ],
)
def test_process_group_failures_are_described_in_one_line(tmp_path, gloo_message, reason):
    """The messages gloo raised when a rank stalled or died (seen in the stall test)."""
    assert describe_collective_failure(RuntimeError(gloo_message), 5) is None  # no group yet
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        message = describe_collective_failure(RuntimeError(gloo_message), 5)
        unrelated = describe_collective_failure(RuntimeError("shape mismatch in conv1"), 5)
    finally:
        torch.distributed.destroy_process_group()
    assert message.startswith(f"rank 0 {reason} (train.ddp_timeout_s=5): ")
    assert gloo_message.splitlines()[0] in message and "run.resume=auto" in message
    assert unrelated is None


def test_stop_vote_answers_one_call_late_and_alone_at_once(tmp_path):
    """Every rank reads the vote of the call before: the same answer at the same step,
    without waiting for the step in flight."""
    assert StopVote(torch.device("cpu"))(True) is True  # no process group: no vote to wait for
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        vote = StopVote(torch.device("cpu"))
        answers = [vote(wish) for wish in (False, True, False, False, True, True)]
    finally:
        torch.distributed.destroy_process_group()
    assert answers == [False, False, True, False, False, True]


def test_gather_and_rank_seeds_without_a_process_group():
    assert all_gather_object({"a": 1}) == [{"a": 1}]
    seeds = {rank_seed(0, rank) for rank in range(4)} | {rank_seed(1, rank) for rank in range(4)}
    assert len(seeds) == 8 and 0 not in seeds  # never the shared seed of the weights' init


TORCHRUN_ENVIRONMENT = {
    "RANK": "0",
    "LOCAL_RANK": "0",
    "WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29999",
}


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"WORLD_SIZE": "2"}, "MASTER_ADDR, MASTER_PORT missing"),
        ({"RANK": "1", "LOCAL_RANK": "1"}, "WORLD_SIZE"),
        ({**TORCHRUN_ENVIRONMENT, "RANK": "one"}, "must be integers"),
        ({**TORCHRUN_ENVIRONMENT, "RANK": "2"}, "outside WORLD_SIZE=2"),
    ],
)
def test_ddp_without_torchrun_variables_is_a_clear_error(monkeypatch, environment, expected):
    for name in TORCHRUN_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=expected) as error:
        init_distributed(timeout_s=5, device="cpu")
    assert "torchrun" in str(error.value)
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize(
    ("unavailable", "device", "expected"),
    [
        ("is_available", "cpu", "no torch.distributed"),
        ("is_gloo_available", "cpu", "no gloo backend"),
        ("is_nccl_available", "cuda", "no nccl backend"),
    ],
)
def test_a_missing_backend_is_a_clear_error(monkeypatch, unavailable, device, expected):
    for name, value in TORCHRUN_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.distributed, unavailable, lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # nccl is for CUDA
    with pytest.raises(ConfigError, match=expected):
        init_distributed(timeout_s=5, device=device)
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_ddp_from_plain_python_exits_2_with_one_line(run_python, small_overrides, tmp_path):
    result = run_python(
        "train.py", *small_overrides, f"run.dir={tmp_path / 'run'}", env={"WORLD_SIZE": "2"}
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: WORLD_SIZE set but"), lines
    assert not (tmp_path / "run").exists()


def test_sync_batchnorm_on_the_cpu_is_a_clear_error():
    two_ranks = DistributedContext(rank=0, world_size=2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ConfigError, match="train.sync_batchnorm=true needs CUDA"):
        wrap_model(model, torch.device("cpu"), two_ranks, sync_batchnorm=True)


def test_more_processes_than_training_samples_is_a_clear_error():
    cfg = DataConfig(train_size=3, val_size=3, image_size=8, batch_size=2, num_workers=0)
    data = build_datasets(cfg, seed=0)
    with pytest.raises(ConfigError, match="3 samples, fewer than the 4 processes"):
        build_loader(data.train, cfg, train=True, seed=0, rank=0, world_size=4)


def test_each_rank_resumes_its_own_random_stream():
    from {{ cookiecutter.package_name }}.distributed import rng_of_rank

    states = [{"torch": torch.tensor([rank])} for rank in range(2)]
    checkpoint = {"rng": states[0], "rng_per_rank": states}
    assert rng_of_rank(checkpoint, rank=1, world_size=2) is states[1]
    assert rng_of_rank(checkpoint, rank=0, world_size=2) is states[0]
    assert rng_of_rank(checkpoint, rank=0, world_size=4) is None  # saved by 2, resumed by 4
    single = {"rng": states[0]}  # a checkpoint of a run without DDP
    assert rng_of_rank(single, rank=0, world_size=1) is states[0]
    assert rng_of_rank(single, rank=1, world_size=2) is None


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    for name, value in {**TORCHRUN_ENVIRONMENT, "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    with pytest.raises(ConfigError, match="LOCAL_RANK=1 but only 1 CUDA GPUs are visible"):
        init_distributed(timeout_s=5, device="cuda")
    assert not torch.distributed.is_initialized()
