"""The fast paths: in-memory batches, fused optimizers, channels-last weights, torch.compile.

Speed itself is measured by the template's benchmarks, never here; these tests check that
each fast path gives the same training as the plain one, or falls back with a warning.
"""

import pytest
import torch

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint, unwrap
from {{ cookiecutter.package_name }}.config import DataConfig, OptimConfig
from {{ cookiecutter.package_name }}.data import (
    EpochBatchSampler,
    GlobalBatchShardSampler,
    InMemoryLoader,
    TensorBatchSampler,
    build_datasets,
    build_loader,
)
from {{ cookiecutter.package_name }}.engine import compile_model
from {{ cookiecutter.package_name }}.model import SmallResNet
from {{ cookiecutter.package_name }}.optim import build_optimizer
from {{ cookiecutter.package_name }}.train import main


@pytest.mark.parametrize("length", [100, 101, 7])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_tensor_batches_are_the_batches_of_the_epoch_batch_sampler(length, world_size):
    """The in-memory fast path must give the very batches a DataLoader would."""
    for rank in range(world_size):
        sampler = GlobalBatchShardSampler(length, 8, rank, world_size, seed=5)
        drop_last = len(sampler) > 8
        reference = EpochBatchSampler(sampler, batch_size=8, drop_last=drop_last)
        fast = TensorBatchSampler(sampler, batch_size=8, drop_last=drop_last)
        assert fast.batches_per_epoch == reference.batches_per_epoch
        for epoch, start_batch in [(0, 0), (3, 0), (3, 2)]:
            reference.set_epoch(epoch, start_batch)
            fast.set_epoch(epoch, start_batch)
            assert [batch.tolist() for batch in fast] == [list(batch) for batch in reference]
            assert len(fast) == len(reference)


def test_built_in_data_is_served_from_memory_without_a_data_loader():
    cfg = DataConfig(train_size=40, val_size=10, image_size=8, batch_size=16, num_workers=0)
    data = build_datasets(cfg, seed=0)
    loader = build_loader(data.train, cfg, train=True, seed=0, device=torch.device("cpu"))
    assert isinstance(loader, InMemoryLoader)
    images, labels = next(iter(loader))
    assert images.shape == (16, 3, 8, 8) and images.dtype == torch.float32
    first = next(iter(loader.batch_sampler))
    assert torch.equal(labels, data.train.labels[first])
    assert torch.equal(images, data.train[first][0])
    # Normalised as documented: pixel values 0..255 map to (x / 255 - 0.5) / 0.25.
    pixels = data.train.images[first].float()
    assert torch.allclose(images, (pixels / 255 - 0.5) / 0.25, atol=1e-6)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_optimizers_use_the_fused_kernels_on_cpu(name):
    optimizer = build_optimizer(
        OptimConfig(name=name, lr=0.01), SmallResNet(num_classes=3, width=4)
    )
    assert optimizer.defaults["fused"] is True


def test_frozen_model_without_trainable_parameters_still_gets_an_optimizer():
    model = SmallResNet(num_classes=3, width=4).requires_grad_(False)
    model.head.requires_grad_(True)
    optimizer = build_optimizer(OptimConfig(lr=0.01), model)
    assert sum(len(group["params"]) for group in optimizer.param_groups) == 2


def test_channels_last_training_matches_the_plain_layout(make_config, tmp_path):
    """Same steps in both memory layouts: the weights agree up to float rounding."""
    weights = {}
    for channels_last in (True, False):
        folder = tmp_path / str(channels_last)
        cfg = make_config(
            "train.max_steps=3", f"train.channels_last={channels_last}", run_dir=folder
        )
        assert main(cfg) == 0
        weights[channels_last] = load_checkpoint(folder / "checkpoints" / "last.pt")["model"]
    for key, value in weights[True].items():
        assert torch.allclose(value.float(), weights[False][key].float(), atol=1e-4), key


def test_compile_falls_back_with_a_warning_where_it_cannot_compile(monkeypatch, project_log):
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    model = SmallResNet(num_classes=3, width=4)
    assert compile_model(model, torch.device("cpu")) is model
    assert "train.compile" in project_log.text and "training without it" in project_log.text


@pytest.mark.slow
def test_compiled_model_saves_the_plain_weights(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    model = SmallResNet(num_classes=3, width=4)
    compiled = compile_model(model, torch.device("cpu"))  # compiles lazily: nothing runs yet
    assert compiled is not model and unwrap(compiled) is model
    assert not any(key.startswith("_orig_mod.") for key in unwrap(compiled).state_dict())
