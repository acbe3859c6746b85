"""Models: output shapes, torchvision models by name, initial weights, freezing, summary."""

import sys
import time

import pytest
import torch
from torch import nn

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint, write_weights
from {{ cookiecutter.package_name }}.config import (
    ConfigError,
    ModelConfig,
)
from {{ cookiecutter.package_name }}.model import (
    SmallResNet,
    build_model,
    check_input_size,
    count_parameters,
    flops_per_sample,
    model_summary,
)
from {{ cookiecutter.package_name }}.train import main


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


def test_freeze_up_to_a_stage_freezes_everything_before_it_too():
    model = build_model(ModelConfig(width=8, freeze=["up_to:stages.0"]), 10, in_channels=3)
    for name, parameter in model.named_parameters():
        frozen = name.startswith(("stem", "stages.0"))
        assert parameter.requires_grad is not frozen, name
    trainable, total = count_parameters(model)
    assert 0 < trainable < total


# googlenet: built without its auxiliary classifiers, whose outputs the loss could not take.
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "googlenet"])
def test_torchvision_model_smoke_trains_one_batch(make_config, tmp_path, name):
    cfg = make_config(
        f"model.name={name}",
        "train.max_steps=1",
        "data.train_size=8",
        "data.val_size=4",
        "data.batch_size=4",
    )
    assert main(cfg) == 0
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint["progress"]["global_step"] == 1
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert f"model: {name}, " in log and "MFLOPs per sample, input 3x32x32" in log


class TakesOneSide(nn.Module):
    """Refuses every input but `side` x `side`, as vit_b_16 takes 224 only."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side
        self.linear = nn.Linear(3, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[-1] == self.side, f"Expected {self.side} but got {images.shape[-1]}"
        return self.linear(images.mean(dim=(2, 3)))


def test_a_model_that_refuses_the_image_size_names_the_size_it_takes():
    with pytest.raises(ConfigError) as error:
        check_input_size(TakesOneSide(224), "vit_like", in_channels=3, image_size=32)
    message = str(error.value)
    assert "model.name=vit_like cannot take 32x32 images (Expected 224 but got 32)" in message
    assert "set data.image_size=224" in message
    with pytest.raises(ConfigError, match="set data.image_size=224"):  # tried below 256 too
        check_input_size(TakesOneSide(224), "vit_like", in_channels=3, image_size=256)
    model = TakesOneSide(32)
    check_input_size(model, "fits", in_channels=3, image_size=32)  # no error
    assert model.training  # the check left it in training mode


def test_a_model_that_takes_no_size_keeps_its_own_error():
    class Broken(nn.Module):
        def forward(self, images):
            raise RuntimeError("a bug in forward")

    with pytest.raises(RuntimeError, match="a bug in forward"):
        check_input_size(Broken(), "broken", in_channels=3, image_size=32)


def test_training_a_torchvision_model_on_too_small_images_is_one_clear_error(make_config):
    cfg = make_config("model.name=squeezenet1_1", "data.image_size=16", "train.max_steps=1")
    with pytest.raises(ConfigError) as error:
        main(cfg)
    message = str(error.value)
    assert "model.name=squeezenet1_1 cannot take 16x16 images" in message
    assert "set data.image_size=24" in message or "set data.image_size=32" in message, message


def test_weights_with_auxiliary_classifiers_load_into_the_model_built_without(tmp_path):
    import torchvision

    full = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    path = tmp_path / "googlenet.pth"
    write_weights(full.state_dict(), path)  # as torchvision's ImageNet file holds them
    cfg = ModelConfig(name="googlenet", weights=str(path))
    model = build_model(cfg, num_classes=1000, in_channels=3)
    assert not any(key.startswith("aux") for key in model.state_dict())
    assert torch.equal(model.state_dict()["fc.weight"], full.state_dict()["fc.weight"])


def save_small_resnet(path, width=8, num_classes=10):
    source = build_model(ModelConfig(width=width), num_classes=num_classes, in_channels=3)
    if path.suffix == ".safetensors":  # as a model hub would give them
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        write_weights(source.state_dict(), path)  # as torch.save writes it
    return source


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_initial_weights_load_and_the_classifier_is_replaced(tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors", reason="the safetensors package is not installed")
    path = tmp_path / f"weights{suffix}"
    source = save_small_resnet(path)
    model = build_model(ModelConfig(width=8, weights=str(path)), num_classes=4, in_channels=3)
    assert torch.equal(model.stem[0].weight, source.stem[0].weight)
    assert torch.equal(model.stages[2].conv2.weight, source.stages[2].conv2.weight)
    assert model.head.weight.shape == (4, 32)  # a new classifier for 4 classes
    gray = build_model(ModelConfig(width=8, weights=str(path)), num_classes=10, in_channels=1)
    assert torch.equal(gray.stem[0].weight, source.stem[0].weight.sum(dim=1, keepdim=True))
    assert torch.equal(gray.head.weight, source.head.weight)  # same class count: kept


def test_weights_of_another_model_give_a_clear_error(tmp_path):
    path = tmp_path / "wide.pth"
    save_small_resnet(path, width=16)
    with pytest.raises(ConfigError, match="does not fit model.name=small_resnet.*shapes differ"):
        build_model(ModelConfig(width=8, weights=str(path)), num_classes=10, in_channels=3)
    with pytest.raises(ConfigError, match="does not fit.*missing in the file"):
        build_model(ModelConfig(name="resnet18", weights=str(path)), 10, in_channels=3)


@pytest.mark.parametrize(
    "file_name, content, words",
    [
        ("missing.pth", None, "does not exist"),
        ("junk.pth", b"not weights", "corrupt"),
        ("weights.npz", b"", "expected a .pth, .pt or .safetensors file"),
    ],
)
def test_unusable_weights_file_gives_a_clear_error(tmp_path, file_name, content, words):
    path = tmp_path / file_name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=words):
        build_model(ModelConfig(width=8, weights=str(path)), num_classes=10, in_channels=3)


def test_safetensors_weights_without_the_package_name_the_file_and_the_fix(tmp_path, monkeypatch):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"{}")
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # as if not installed
    with pytest.raises(ConfigError) as error:
        build_model(ModelConfig(width=8, weights=str(path)), num_classes=10, in_channels=3)
    message = str(error.value)
    assert message.startswith("model.weights") and str(path) in message
    assert "pip install safetensors" in message


def test_flops_are_counted_on_one_sample_and_leave_the_model_as_it_was():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    assert flops_per_sample(model, in_channels=3, image_size=2) == 2 * 12 * 5
    assert model.training
    small = build_model(ModelConfig(width=16), num_classes=10, in_channels=3)
    before = {key: value.clone() for key, value in small.state_dict().items()}
    started = time.perf_counter()
    summary = model_summary(small, "small_resnet", in_channels=3, image_size=32)
    assert time.perf_counter() - started < 0.5  # logged at every start: it must stay cheap
    assert "trainable / " in summary and "MFLOPs per sample, input 3x32x32" in summary
    for key, value in small.state_dict().items():
        assert torch.equal(value, before[key]), key  # batch-norm statistics untouched


def test_training_starts_from_model_weights_and_a_resume_does_not_need_them(make_config, tmp_path):
    path = tmp_path / "initial.pth"
    save_small_resnet(path)
    assert main(make_config(f"model.weights={path}")) == 0
    log = tmp_path / "run" / "train.log"
    assert f"initial weights from {path}" in log.read_text(encoding="utf-8")
    path.unlink()  # the checkpoint holds the weights now
    resumed = make_config(
        f"model.weights={path}", "train.epochs=2", "run.resume=auto", "run.extend=true"
    )
    assert main(resumed) == 0
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint["progress"]["epoch"] == 2
