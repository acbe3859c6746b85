"""Optimizer parameter groups and learning-rate schedules."""

import io
import math
from collections import Counter

import pytest
import torch
from torch import nn

from {{ cookiecutter.package_name }}.config import (
    ModelConfig,
    OptimConfig,
    SchedConfig,
    schema_fields,
)
from {{ cookiecutter.package_name }}.model import build_model
from {{ cookiecutter.package_name }}.optim import (
    build_optimizer,
    build_scheduler,
)

NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def small_model(freeze=()) -> nn.Module:
    return build_model(ModelConfig(width=8, freeze=list(freeze)), num_classes=10, in_channels=3)


def expected_decay(model: nn.Module) -> dict[int, bool]:
    """id(parameter) -> whether weight decay should apply (conv/linear weights only)."""
    decays = {}
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if isinstance(module, (nn.Conv2d, nn.Linear)) and name == "weight":
                decays[id(parameter)] = True
            elif name == "bias" or isinstance(module, NORMS):
                decays[id(parameter)] = False
            else:
                raise AssertionError(f"unexpected parameter {name} of {type(module).__name__}")
    return decays


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_no_decay_on_biases_and_norms_every_parameter_once(name):
    model = small_model()
    optimizer = build_optimizer(OptimConfig(name=name, lr=0.01, weight_decay=0.05), model)
    decays = expected_decay(model)
    assert True in decays.values() and False in decays.values()
    counts = Counter(id(p) for group in optimizer.param_groups for p in group["params"])
    assert set(counts) == {id(p) for p in model.parameters()}
    assert set(counts.values()) == {1}, "a parameter appears in more than one group"
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            wanted = 0.05 if decays[id(parameter)] else 0.0
            assert group["weight_decay"] == wanted


def test_frozen_parameters_are_left_out_of_the_optimizer():
    model = small_model(freeze=["stem"])
    optimizer = build_optimizer(OptimConfig(lr=0.01), model)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_optimizer == trainable
    assert all(id(p) not in in_optimizer for p in model.stem.parameters())


def test_optimizer_settings_are_applied():
    model = small_model()
    sgd = build_optimizer(OptimConfig(name="sgd", lr=0.2, momentum=0.5, nesterov=True), model)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["lr"] == 0.2 and sgd.param_groups[0]["momentum"] == 0.5
    assert sgd.param_groups[0]["nesterov"] is True
    adamw = build_optimizer(OptimConfig(name="adamw", lr=0.3, betas=[0.8, 0.9]), model)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["betas"] == (0.8, 0.9) and adamw.param_groups[0]["lr"] == 0.3


def learning_rates(optimizer, scheduler, steps: int) -> list[float]:
    """The learning rate used at each of `steps` optimizer steps, then the one after them."""
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates + [optimizer.param_groups[0]["lr"]]


def test_cosine_warms_up_peaks_at_lr_and_ends_at_the_minimum():
    lr, min_ratio, steps_per_epoch, total = 0.1, 0.1, 10, 50
    optimizer = build_optimizer(OptimConfig(lr=lr), small_model())
    sched = SchedConfig(name="cosine", warmup_epochs=1.0, min_lr_ratio=min_ratio)
    scheduler = build_scheduler(sched, optimizer, steps_per_epoch, total)
    rates = learning_rates(optimizer, scheduler, total)
    warmup = rates[: steps_per_epoch + 1]
    assert all(a < b for a, b in zip(warmup, warmup[1:], strict=False)), "warmup must rise"
    assert rates[0] < 0.2 * lr
    assert max(rates) == pytest.approx(lr) and rates.index(max(rates)) == steps_per_epoch
    decay = rates[steps_per_epoch:]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False)), "decay must not rise"
    assert rates[-1] == pytest.approx(min_ratio * lr)
    middle = steps_per_epoch + (total - steps_per_epoch) // 2
    assert rates[middle] == pytest.approx(min_ratio * lr + (1 - min_ratio) * lr / 2)


def test_cosine_without_warmup_starts_at_lr():
    optimizer = build_optimizer(OptimConfig(lr=0.05), small_model())
    scheduler = build_scheduler(SchedConfig(name="cosine", warmup_epochs=0), optimizer, 10, 20)
    rates = learning_rates(optimizer, scheduler, 20)
    assert rates[0] == pytest.approx(0.05)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)


SCHEDULERS = dict(schema_fields())["sched.name"].metadata["choices"]


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_builds_steps_and_saves_its_state(name):
    optimizer = build_optimizer(OptimConfig(lr=0.1), small_model())
    scheduler = build_scheduler(SchedConfig(name=name), optimizer, 10, 100)
    for _ in range(3):
        optimizer.step()
        scheduler.step(1.0) if name == "plateau" else scheduler.step()
    lr = optimizer.param_groups[0]["lr"]
    assert math.isfinite(lr) and 0 < lr <= 0.1
    # The state goes into every checkpoint, which must load with weights_only=True.
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    again = build_scheduler(SchedConfig(name=name), optimizer, 10, 100)
    again.load_state_dict(state)
    assert again.state_dict() == scheduler.state_dict()
