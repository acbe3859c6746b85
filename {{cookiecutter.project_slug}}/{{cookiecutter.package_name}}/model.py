"""Models: the project's own small residual CNN, and torchvision classifiers by name."""

import logging

import torch
from torch import nn

from .config import ConfigError, ModelConfig

logger = logging.getLogger(__name__)

OWN_MODELS = ("small_resnet",)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 strided) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A compact ResNet for small images: a strided stem, then three stages of residual blocks.

    The stem halves the resolution at once: small images lose little, and every later
    layer costs a quarter, which is what makes CPU training take seconds.
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, width: int = 32, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.Sequential(
            ResidualBlock(width, width),
            ResidualBlock(width, 2 * width, stride=2),
            ResidualBlock(2 * width, 4 * width, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * width, num_classes)
        init_weights(self)
        # A near-zero classifier starts every class equally likely (loss = ln(classes)).
        nn.init.normal_(self.head.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.head(self.dropout(features))


def init_weights(model: nn.Module) -> None:
    """Kaiming init for convolutions and linear layers (ReLU nets), unit scale for norms.

    The last batch norm of every residual branch starts at zero, so each block begins as
    the identity: a known trick that makes early training of ResNets faster and steadier.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for module in model.modules():
        if isinstance(module, ResidualBlock):
            nn.init.zeros_(module.bn2.weight)


def torchvision_model_names() -> list[str]:
    """Names of torchvision's classification models (imports torchvision, ~2 s)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_model_name(name: str) -> None:
    """Fail early, before any data is built, when `model.name` names no known model."""
    if name in OWN_MODELS:
        return
    known = torchvision_model_names()
    if name not in known:
        raise ConfigError(
            f"model.name={name!r} is not a known model; use one of {', '.join(OWN_MODELS)} "
            f"or a torchvision classification model such as resnet18, mobilenet_v3_small, "
            f"efficientnet_b0 ({len(known)} available)"
        )


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The model named by `cfg.name`, its classifier sized to `num_classes`, freezing applied."""
    check_model_name(cfg.name)
    if cfg.name == "small_resnet":
        model = SmallResNet(num_classes, in_channels, width=cfg.width, dropout=cfg.dropout)
    else:
        model = build_torchvision_model(cfg.name, num_classes, in_channels)
    freeze_parameters(model, cfg.freeze)
    return model


def build_torchvision_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """A torchvision classifier with random init (weights are never downloaded at run time)."""
    import torchvision

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        adapt_first_conv(model, in_channels)
    return model


def adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first convolution with one that takes `in_channels` (e.g. 1 for grayscale)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                replacement = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups,
                    child.bias is not None,
                )
                setattr(parent, child_name, replacement)
                return
    raise ConfigError("could not find the model's first 3-channel convolution to adapt")


def freeze_parameters(model: nn.Module, prefixes: list[str]) -> None:
    """Turn off gradients for every parameter whose name starts with one of `prefixes`."""
    if not prefixes:
        return
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            top_level = sorted({name.split(".")[0] for name in names})
            raise ConfigError(
                f"model.freeze: no parameter name starts with {prefix!r}; "
                f"top-level parameter names are: {', '.join(top_level)}"
            )
    for name, parameter in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            parameter.requires_grad_(False)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
