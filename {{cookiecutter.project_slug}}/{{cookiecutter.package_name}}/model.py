"""Models: the project's own small residual CNN, torchvision classifiers by name and timm's
(timm:NAME), from random init, published weights (pretrained.py) or a weights file."""

import logging
from pathlib import Path

import torch
from torch import nn

from .config import ConfigError, ModelConfig
from .pretrained import (
    build_timm_model,
    check_timm_name,
    is_timm_name,
    torchvision_published_weights,
)

logger = logging.getLogger(__name__)

OWN_MODELS = ("small_resnet",)
# torchvision models with auxiliary classifiers, built without them: in training mode they
# would return a tuple of outputs that the loss cannot take (and need larger images).
AUXILIARY_HEADS = {"inception_v3": ("AuxLogits.",), "googlenet": ("aux1.", "aux2.")}


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
    if is_timm_name(name):
        check_timm_name(name)
        return
    known = torchvision_model_names()
    if name not in known:
        raise ConfigError(
            f"model.name={name!r} is not a known model; use one of {', '.join(OWN_MODELS)}, "
            f"a torchvision classification model such as resnet18, mobilenet_v3_small, "
            f"efficientnet_b0 ({len(known)} available), or timm:NAME for a timm model"
        )


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The model named by `cfg.name`, its classifier sized to `num_classes`, initial weights
    from `cfg.pretrained` (the published weights, from the local caches) or `cfg.weights`
    (a file) if given, freezing applied."""
    check_model_name(cfg.name)
    if cfg.pretrained and cfg.weights:
        raise ConfigError(
            "model.pretrained=true and model.weights are both set; keep one: the published "
            "weights of model.name, or the weights in that file"
        )
    if cfg.name == "small_resnet":
        if cfg.pretrained:
            raise ConfigError(
                "model.pretrained=true: small_resnet has no published weights; choose a "
                "torchvision model (e.g. model.name=resnet18) or a timm one (timm:NAME)"
            )
        model = SmallResNet(num_classes, in_channels, width=cfg.width, dropout=cfg.dropout)
    elif is_timm_name(cfg.name):
        model = build_timm_model(cfg.name, num_classes, in_channels, cfg.pretrained)
    else:
        model = build_torchvision_model(cfg.name, num_classes, in_channels)
        if cfg.pretrained:
            load_published_weights(model, cfg.name)
    if cfg.weights:
        load_initial_weights(model, Path(cfg.weights), cfg.name)
    freeze_parameters(model, cfg.freeze)
    return model


def build_torchvision_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """A torchvision classifier with random init (weights are never downloaded at run time).

    The same architecture whether or not it then takes pretrained weights: a resumed run and
    evaluate.py build it without reading the weights file, and must get the same model."""
    import torchvision

    options = {"aux_logits": False, "init_weights": True} if name in AUXILIARY_HEADS else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    if in_channels != 3:
        adapt_first_conv(model, in_channels)
    return model


def load_initial_weights(model: nn.Module, path: Path, name: str) -> None:
    """Start from the weights in a local file, e.g. torchvision's ImageNet `.pth`, fitted to
    `model` as fit_weights says."""
    from .checkpoint import CheckpointError, load_weights, strip_prefixes

    if not path.is_file():
        raise ConfigError(f"model.weights={str(path)!r}: the file does not exist")
    if path.suffix not in (".pth", ".pt", ".safetensors"):
        raise ConfigError(f"model.weights={str(path)!r}: expected a .pth, .pt or .safetensors file")
    try:
        weights = strip_prefixes(load_weights(path))
    except CheckpointError as error:
        raise ConfigError(f"model.weights: {error}") from None
    weights, kept_head, problems = fit_weights(model, weights, name)
    if problems:
        raise ConfigError(
            f"model.weights={str(path)!r} does not fit model.name={name} (weights of another "
            "model?): " + " | ".join(problems)
        )
    model.load_state_dict(weights)
    logger.info("initial weights from %s%s", path, _kept_head_note(kept_head))


def load_published_weights(model: nn.Module, name: str) -> None:
    """Start from torchvision's published weights of `name`, read from the local cache."""
    weights, source = torchvision_published_weights(name)
    weights, kept_head, problems = fit_weights(model, weights, name)
    if problems:  # e.g. weights for another input size than the model built here
        raise ConfigError(
            f"model.pretrained=true: torchvision's weights of {name} ({source}) do not fit the "
            f"{name} this project builds: " + " | ".join(problems) + "; choose another model"
        )
    model.load_state_dict(weights)
    logger.info("initial weights: %s%s", source, _kept_head_note(kept_head))


def fit_weights(model: nn.Module, weights: dict, name: str) -> tuple[dict, list[str], list[str]]:
    """`weights` (a state dict of model `name`) fitted to `model`: (the fitted state dict,
    the classifier keys kept from `model`, the mismatches that remain).

    The classifier is kept freshly initialised when the weights' has another class count
    (the usual fine-tuning case), and a 3-channel first convolution is summed over its input
    channels for grayscale models. Every other tensor must match by name and shape."""
    from .checkpoint import state_dict_mismatches

    expected = model.state_dict()
    auxiliary = AUXILIARY_HEADS.get(name, ())  # in the file, not in the model built without
    weights = {key: value for key, value in weights.items() if not key.startswith(auxiliary)}
    kept_head = []
    for key in _classifier_keys(model):
        if key in weights and weights[key].shape != expected[key].shape:
            weights[key] = expected[key]  # another class count: keep the new classifier
            kept_head.append(key)
    for key, tensor in weights.items():
        wanted = expected.get(key)
        if wanted is not None and wanted.dim() == 4 and tensor.dim() == 4:
            if tensor.shape[1] == 3 and wanted.shape[1] == 1 and tensor.shape[0] == wanted.shape[0]:
                weights[key] = tensor.sum(dim=1, keepdim=True)  # RGB filters -> grayscale
    return weights, sorted(kept_head), state_dict_mismatches(expected, weights, "file")


def _kept_head_note(kept_head: list[str]) -> str:
    if not kept_head:
        return ""
    return f" (classifier {', '.join(kept_head)} kept new for this class count)"


def _classifier_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the last layer with parameters: the classifier of torchvision
    models (a Linear, or SqueezeNet's 1x1 convolution) and of SmallResNet."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = name
    if last is None:
        return []
    return [f"{last}.{key}" for key in dict(model.get_submodule(last).state_dict())]


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


def freeze_parameters(model: nn.Module, patterns: list[str]) -> None:
    """Turn off gradients for the parameters named by `patterns`: each a name prefix, or
    `up_to:PREFIX` for every parameter from the input up to and including PREFIX."""
    if not patterns:
        return
    names = [name for name, _ in model.named_parameters()]
    frozen = set()
    for pattern in patterns:
        prefix = pattern.removeprefix("up_to:")
        matches = [index for index, name in enumerate(names) if name.startswith(prefix)]
        if not matches:
            top_level = sorted({name.split(".")[0] for name in names})
            raise ConfigError(
                f"model.freeze: no parameter name starts with {prefix!r}; "
                f"top-level parameter names are: {', '.join(top_level)}"
            )
        if pattern.startswith("up_to:"):
            frozen.update(names[: matches[-1] + 1])
        else:
            frozen.update(names[index] for index in matches)
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


# Square sides tried when a model refuses data.image_size, to name the smallest it takes.
PROBE_SIDES = (16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 299, 384, 512)


def check_input_size(model: nn.Module, name: str, in_channels: int, image_size: int) -> None:
    """Run `model` once on a blank image of `image_size`; where it refuses that size (vit_b_16
    takes 224 only, inception_v3 at least 75), a ConfigError names the nearest side of
    PROBE_SIDES that it takes, larger sides tried first (a model short of pixels is the usual
    case), then smaller ones. A model that takes none of them has a bug: its error stays."""
    try:
        run_blank(model, in_channels, image_size)
        return
    except (RuntimeError, AssertionError, ValueError) as error:
        refusal = error
    larger = [side for side in PROBE_SIDES if side > image_size]
    smaller = [side for side in reversed(PROBE_SIDES) if side < image_size]
    for side in larger + smaller:
        try:
            run_blank(model, in_channels, side)
        except (RuntimeError, AssertionError, ValueError):
            continue
        problem = str(refusal).strip().splitlines()[0] if str(refusal).strip() else "refused"
        raise ConfigError(
            f"model.name={name} cannot take {image_size}x{image_size} images ({problem}); set "
            f"data.image_size={side}, the nearest side it takes (of {PROBE_SIDES[0]}-"
            f"{PROBE_SIDES[-1]}, larger ones tried first)"
        )
    raise refusal


def run_blank(model: nn.Module, in_channels: int, side: int) -> None:
    """One forward pass of a zero image, in eval mode without gradients (batch-norm
    statistics and the training mode stay as they were)."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, side, side))
    finally:
        model.train(was_training)


def flops_per_sample(model: nn.Module, in_channels: int, image_size: int) -> int:
    """Forward FLOPs of one image, counted by torch's FlopCounterMode on the CPU.

    Counted in eval mode without gradients, so batch-norm statistics and RNG stay as they were.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run_blank(model, in_channels, image_size)
    return counter.get_total_flops()


def model_summary(model: nn.Module, name: str, in_channels: int, image_size: int) -> str:
    """One line: parameters (trainable / total), FLOPs per sample and the input shape."""
    trainable, total = count_parameters(model)
    flops = flops_per_sample(model, in_channels, image_size)
    return (
        f"model: {name}, {trainable:,} trainable / {total:,} parameters, "
        f"{flops / 1e6:,.1f} MFLOPs per sample, input {in_channels}x{image_size}x{image_size}"
    )
