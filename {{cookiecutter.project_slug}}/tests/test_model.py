"""Models: output shapes, torchvision models by name, and freezing."""

import pytest
import torch

from {{ cookiecutter.package_name }}.config import (
    ConfigError,
    ModelConfig,
)
from {{ cookiecutter.package_name }}.model import (
    SmallResNet,
    build_model,
    count_parameters,
)


@pytest.mark.parametrize("image_size", [16, 32, 40])
def test_small_resnet_gives_one_logit_per_class(image_size):
    model = build_model(ModelConfig(width=8), num_classes=7, in_channels=3)
    assert isinstance(model, SmallResNet)
    logits = model(torch.randn(3, 3, image_size, image_size))
    assert logits.shape == (3, 7)


def test_small_resnet_takes_grayscale_images():
    model = build_model(ModelConfig(width=8), num_classes=4, in_channels=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 4)


def test_small_resnet_starts_with_equal_class_probabilities():
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8), num_classes=10, in_channels=3).eval()
    logits = model(torch.randn(8, 3, 32, 32))
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(8))
    assert abs(loss.item() - torch.log(torch.tensor(10.0)).item()) < 0.1


@pytest.mark.parametrize("in_channels", [3, 1])
def test_torchvision_model_by_name(in_channels):
    model = build_model(ModelConfig(name="resnet18"), num_classes=10, in_channels=in_channels)
    logits = model.eval()(torch.randn(2, in_channels, 32, 32))
    assert logits.shape == (2, 10)


def test_unknown_model_name_raises_config_error():
    with pytest.raises(ConfigError, match="resnet_nonexistent"):
        build_model(ModelConfig(name="resnet_nonexistent"), num_classes=10, in_channels=3)


def test_freeze_turns_off_exactly_the_named_parameters():
    prefixes = ["stem", "stages.0"]
    model = build_model(ModelConfig(width=8, freeze=prefixes), num_classes=10, in_channels=3)
    frozen = unfrozen = 0
    for name, parameter in model.named_parameters():
        should_freeze = name.startswith(tuple(prefixes))
        assert parameter.requires_grad is not should_freeze, name
        if should_freeze:
            frozen += parameter.numel()
        else:
            unfrozen += parameter.numel()
    assert frozen > 0 and unfrozen > 0
    trainable, total = count_parameters(model)
    assert (trainable, total) == (unfrozen, frozen + unfrozen)
    reference = build_model(ModelConfig(width=8), num_classes=10, in_channels=3)
    assert count_parameters(reference) == (total, total)


def test_frozen_parameters_get_no_gradient():
    model = build_model(ModelConfig(width=8, freeze=["stem"]), num_classes=10, in_channels=3)
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is None) == name.startswith("stem"), name


def test_bad_freeze_prefix_raises_config_error():
    with pytest.raises(ConfigError, match="stemm"):
        build_model(ModelConfig(width=8, freeze=["stemm"]), num_classes=10, in_channels=3)
