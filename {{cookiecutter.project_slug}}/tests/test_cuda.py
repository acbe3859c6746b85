"""The CUDA path: fp16 with its grad scaler, bf16, checkpoints that move between the GPU and
the CPU, exact resume, the data held on the GPU, and the DDP stop vote over nccl.

Every test here is marked `cuda` (`pytest -m cuda` runs them alone) and is skipped on a
machine without a CUDA device. The template's bench/gpu_check.sh runs them on a lent GPU.

Exact resume on a GPU holds under deterministic settings only: torch's deterministic
algorithms, CUBLAS_WORKSPACE_CONFIG=:4096:8, and cuDNN's benchmark off (train.py turns it
on, since the fastest kernels it finds may differ from process to process). With the
defaults, two runs, resumed or not, may differ in the last bits of their weights.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_images
from torch import nn

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.data import (
    AugmentingLoader,
    build_datasets,
    build_loader,
    epoch_batch_sampler,
)
from {{ cookiecutter.package_name }}.engine import TrainState, train_one_epoch
from {{ cookiecutter.package_name }}.features import feature_module
from {{ cookiecutter.package_name }}.model import build_model
from {{ cookiecutter.package_name }}.train import build_trainer, main

pytestmark = [
    pytest.mark.slow,  # left out of the quick subset: pytest -m "not slow"
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]
CUDA = torch.device("cuda", 0)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "kill_driver.py"

needs_amp = pytest.mark.skipif(
    feature_module("amp") is None, reason="generated without mixed precision (use_amp=no)"
)


class OverflowAt(nn.Module):
    """The wrapped model, whose logits become infinite at training step `at` (1-based):
    the loss and every gradient of that step are then NaN or infinite, as in an fp16
    overflow. (`module` is the name checkpoint.unwrap looks through.)"""

    def __init__(self, module: nn.Module, at: int) -> None:
        super().__init__()
        self.module = module
        self.at = at
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.module(images)
        if not self.training:
            return logits
        self.calls += 1
        return logits * float("inf") if self.calls == self.at else logits


def cuda_trainer(cfg, wrap=None):
    """(trainer, train loader, val loader) on the GPU, set up as train.py sets them up."""
    data = build_datasets(cfg.data, cfg.seed)
    model = build_model(cfg.model, len(data.classes), data.in_channels).to(CUDA)
    model = model.to(memory_format=torch.channels_last)
    if wrap is not None:
        model = wrap(model)
    train_loader = build_loader(data.train, cfg.data, train=True, seed=cfg.seed, device=CUDA)
    val_loader = build_loader(data.val, cfg.data, train=False, seed=cfg.seed, device=CUDA)
    per_epoch = epoch_batch_sampler(train_loader).batches_per_epoch
    trainer = build_trainer(cfg, model, CUDA, per_epoch)
    return trainer, train_loader, val_loader


def train_steps(trainer, loader, steps: int, after_step=lambda state: None):
    """`steps` optimizer steps through the project's loop, across epochs as train.py goes;
    returns the TrainState and the mean training loss of every finished epoch."""
    state, losses = TrainState(), []
    batches = epoch_batch_sampler(loader)
    per_epoch = batches.batches_per_epoch

    def stop() -> bool:
        after_step(state)
        return state.global_step >= steps

    while state.global_step < steps:
        batches.set_epoch(state.epoch, state.batch_in_epoch)
        train_one_epoch(trainer, loader, per_epoch, state, stop)
        if state.batch_in_epoch >= per_epoch:
            state.fold_pending()
            losses.append(state.loss_sum / state.seen)
            state.start_epoch(state.epoch + 1)
    return state, losses


@needs_amp
def test_fp16_scaler_skips_an_overflowing_step_and_keeps_the_schedule(make_config):
    steps, overflow = 24, 5
    cfg = make_config("train.device=cuda", "train.amp_dtype=fp16", "train.epochs=3")
    trainer, train_loader, _ = cuda_trainer(cfg, wrap=lambda model: OverflowAt(model, overflow))
    scaler = trainer.precision.scaler
    assert trainer.precision.dtype is torch.float16 and scaler.is_enabled()
    assert trainer.step_scheduler_per_batch  # cosine: one scheduler step per optimizer step
    scales, snapshots = [scaler.get_scale()], {}

    def watch(state: TrainState) -> None:
        scales.append(scaler.get_scale())  # halved after each skipped step, else kept
        if state.global_step in (overflow - 1, overflow, overflow + 1):
            parameters = trainer.model.parameters()
            snapshots[state.global_step] = [p.detach().clone() for p in parameters]

    state, losses = train_steps(trainer, train_loader, steps, watch)

    skipped = [step for step in range(1, steps + 1) if scales[step] < scales[step - 1]]
    assert overflow in skipped and scales[overflow] == scales[overflow - 1] * 0.5
    unchanged = zip(snapshots[overflow - 1], snapshots[overflow], strict=True)
    assert all(torch.equal(left, right) for left, right in unchanged)  # the step was skipped
    if overflow + 1 not in skipped:
        changed = zip(snapshots[overflow], snapshots[overflow + 1], strict=True)
        assert not all(torch.equal(left, right) for left, right in changed)
    assert state.first_nonfinite_step == overflow  # recorded, and no error: the scaler skips
    # The schedule kept its place: it stepped with every optimizer step, skipped or not,
    # while the optimizer's own step count lacks the skipped ones.
    assert state.global_step == trainer.scheduler.last_epoch == steps
    factor = trainer.scheduler.lr_lambdas[0](steps)
    assert trainer.lr == pytest.approx(cfg.optim.lr * factor)
    optimizer_steps = {int(s["step"]) for s in trainer.optimizer.state.values()}
    assert optimizer_steps == {steps - len(skipped)}
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert losses[2] < losses[1]  # it learns (the first epoch's mean holds the NaN)


@needs_amp
def test_bf16_autocast_trains_without_a_scaler(make_config):
    cfg = make_config("train.device=cuda", "train.amp_dtype=bf16", "train.epochs=3")
    trainer, train_loader, val_loader = cuda_trainer(cfg)
    assert trainer.precision.dtype is torch.bfloat16
    assert not trainer.precision.scaler.is_enabled()
    images, _ = next(iter(val_loader))
    with trainer.precision.autocast():
        assert trainer.model(images).dtype is torch.bfloat16
    state, losses = train_steps(trainer, train_loader, 24)
    assert state.first_nonfinite_step == -1
    assert all(p.dtype is torch.float32 and p.is_cuda for p in trainer.model.parameters())
    assert losses[2] < losses[0]  # it learns


@pytest.mark.parametrize("cached", [False, True])
def test_training_steps_do_not_wait_for_the_gpu(make_config, tmp_path, cached):
    """Between two folds of the running sums, no step copies to the host or waits for the
    GPU (torch's sync debug mode raises at the first operation that would): the built-in
    data sliced on the GPU, and cached images cropped and flipped there."""
    overrides = ["train.device=cuda"]
    if cached:
        write_images(tmp_path / "images", {"a": 40, "b": 40})
        overrides += [
            "data.dataset=imagefolder",
            f"data.root={tmp_path / 'images'}",
            "data.image_size=16",
            "data.batch_size=8",
            "data.cache=true",
        ]
    trainer, train_loader, _ = cuda_trainer(make_config(*overrides))
    assert epoch_batch_sampler(train_loader).batches_per_epoch >= 8

    def watch(state: TrainState) -> None:  # from after step 1 until step 7 (in epoch 1)
        torch.cuda.set_sync_debug_mode("error" if state.global_step < 7 else "default")

    try:
        state, _ = train_steps(trainer, train_loader, 7, watch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert state.global_step == 7


def tensors_of(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_of(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_of(item)


def test_a_run_moves_from_the_gpu_to_the_cpu_and_back(make_config, tmp_path):
    """Written on the GPU, a checkpoint loads onto the CPU (map_location) and the run goes on
    there; written on the CPU (no grad scaler there), it goes on on the GPU."""
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert main(make_config("train.device=cuda", "train.epochs=2", "train.max_steps=5")) == 0
    checkpoint = load_checkpoint(last)
    assert all(tensor.device.type == "cpu" for tensor in tensors_of(checkpoint))
    if feature_module("amp") is not None:
        assert checkpoint["scaler"]["scale"] > 0  # fp16 with its scaler on the GPU

    on_cpu = ("train.device=cpu", "train.epochs=2", "train.max_steps=11", "run.resume=auto")
    assert main(make_config(*on_cpu)) == 0
    assert load_checkpoint(last)["progress"]["global_step"] == 11

    assert main(make_config("train.device=cuda", "train.epochs=2", "run.resume=auto")) == 0
    progress = load_checkpoint(last)["progress"]
    assert (progress["global_step"], progress["epoch"]) == (16, 2)


DETERMINISTIC = """
import runpy, sys, torch
torch.use_deterministic_algorithms(True)
from {{ cookiecutter.package_name }} import train
chosen_device = train.pick_device

def same_kernels_in_every_process(name, local_rank):
    device = chosen_device(name, local_rank)
    torch.backends.cudnn.benchmark = False
    return device

train.pick_device = same_kernels_in_every_process
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def deterministic_run(subprocess_env, kill: str, overrides: list[str]) -> tuple[int, str]:
    """tests/kill_driver.py `once KILL` in a fresh process, under deterministic settings."""
    env = {**subprocess_env, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    command = [sys.executable, "-c", DETERMINISTIC, str(DRIVER), "once", kill, *overrides]
    result = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    return result.returncode, result.stderr[-3000:]


def test_resume_after_sigkill_is_bit_exact_with_deterministic_settings(
    tmp_path, small_overrides, subprocess_env, assert_same_run
):
    base = [
        *small_overrides,
        "train.device=cuda",
        "train.epochs=2",
        "model.dropout=0.2",  # the result depends on the GPU's random stream, restored
        "run.save_every_steps=2",
    ]
    straight = [*base, f"run.dir={tmp_path / 'straight'}"]
    code, log = deterministic_run(subprocess_env, "none", straight)
    assert code == 0, log
    resumed = [*base, f"run.dir={tmp_path / 'resumed'}"]
    code, log = deterministic_run(subprocess_env, "step:5", resumed)
    assert code == -9, log  # SIGKILL after optimizer step 5; step 4's checkpoint is newest
    code, log = deterministic_run(subprocess_env, "none", [*resumed, "run.resume=auto"])
    assert code == 0, log
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


@pytest.mark.parametrize("cache", [True, False])
def test_image_folder_training_on_the_gpu(make_config, tmp_path, cache):
    """data.cache=true: the decoded images live on the GPU, and a batch is the batch the
    CPU gives. data.cache=false: pinned batches from worker processes."""
    write_images(tmp_path / "images", {"a": 12, "b": 12})
    overrides = [
        "data.dataset=imagefolder",
        f"data.root={tmp_path / 'images'}",
        "data.image_size=16",
        "data.batch_size=8",
        "data.flip=true",
        "train.epochs=2",  # 2 batches an epoch
        f"data.cache={str(cache).lower()}",
        "data.num_workers=0" if cache else "data.num_workers=2",
    ]
    cfg = make_config("train.device=cuda", *overrides)
    data = build_datasets(cfg.data, cfg.seed)
    loader = build_loader(data.train, cfg.data, train=True, seed=cfg.seed, device=CUDA)
    if cache:
        assert isinstance(loader, AugmentingLoader) and loader.dataset.images.is_cuda
        on_cpu = build_datasets(cfg.data, cfg.seed).train
        cpu_loader = build_loader(on_cpu, cfg.data, train=True, seed=cfg.seed)
        gpu_images, gpu_labels = next(iter(loader))
        cpu_images, cpu_labels = next(iter(cpu_loader))
        assert gpu_images.is_cuda and gpu_labels.is_cuda
        assert torch.equal(gpu_labels.cpu(), cpu_labels)
        # The same crops and flips; the values within rounding (CUDA divides by a scalar
        # as a multiplication by its reciprocal, which may differ in the last bit).
        torch.testing.assert_close(gpu_images.cpu(), cpu_images, rtol=1e-6, atol=1e-6)
    else:
        assert loader.pin_memory and next(iter(loader))[0].is_pinned()
    assert main(make_config("train.device=cuda", *overrides, "train.max_steps=4")) == 0
    progress = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["progress"]
    assert progress["global_step"] == 4


def test_the_stop_vote_over_nccl(tmp_path):
    """The vote's GPU branch: the all-reduced vote copied to pinned memory, read a step later."""
    distributed = feature_module("distributed")
    if distributed is None:
        pytest.skip("generated without DDP (use_ddp=no)")
    if not torch.distributed.is_nccl_available():
        pytest.skip("this torch build has no nccl")
    torch.cuda.set_device(CUDA)
    torch.distributed.init_process_group(
        "nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        vote = distributed.StopVote(CUDA)
        answers = [vote(wish) for wish in (False, True, False, False, True, True)]
    finally:
        torch.distributed.destroy_process_group()
    assert answers == [False, False, True, False, False, True]
