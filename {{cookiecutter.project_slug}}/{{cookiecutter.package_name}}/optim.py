"""Optimizer and learning-rate scheduler factories.

A model's parameters are in two parts: its classifier (the last layer with parameters) and
the rest, its "backbone". From scratch both train alike, in the two groups of
`parameter_groups`. Fine-tuning (`FineTuning`: train.freeze_epochs, optim.backbone_lr_ratio)
gives each part groups of its own: the backbone learns at a fraction of the classifier's
rate, and may stand still while the classifier trains alone for the first epochs.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from .checkpoint import unwrap
from .config import ConfigError, OptimConfig, SchedConfig
from .model import _classifier_keys

# Schedulers stepped after every optimizer step; the others once per epoch.
PER_STEP_SCHEDULERS = ("cosine", "none")
# The "part" of a parameter group, when the classifier and the backbone have groups of their own.
CLASSIFIER, BACKBONE = "classifier", "backbone"


@dataclass(frozen=True)
class FineTuning:
    """How the classifier and the backbone train.

    head_epochs: epochs at the start of the schedule that train the classifier alone;
    backbone_lr_ratio: the backbone's learning rate as a fraction of the classifier's.
    """

    head_epochs: int = 0
    backbone_lr_ratio: float = 1.0

    @property
    def splits(self) -> bool:
        """Whether the two parts need groups of their own (else: exactly as from scratch)."""
        return self.head_epochs > 0 or self.backbone_lr_ratio != 1.0


def fine_tuning(
    freeze_epochs: int | None, backbone_lr_ratio: float | None, schedule_start_epoch: int = 0
) -> FineTuning:
    """The FineTuning of train.freeze_epochs and optim.backbone_lr_ratio (None, as before the
    recipe resolves them: from scratch), for a schedule that starts at `schedule_start_epoch`.

    An extended run (run.extend) starts its schedule after all its epochs so far, so its
    head-only phase is behind it: the extra epochs train the whole network.
    """
    head_epochs = max((freeze_epochs or 0) - schedule_start_epoch, 0)
    return FineTuning(head_epochs, 1.0 if backbone_lr_ratio is None else backbone_lr_ratio)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    # Parameters frozen by model.freeze stay out of the optimizer altogether.
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def _decay_groups(parameters: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """Two groups: weights of conv/linear layers decay; biases and norm scales do not.

    Decaying a bias or a norm's scale only pulls it towards zero without regularising
    anything useful, so (as in most reference recipes) those parameters are exempt.
    One-dimensional parameters are exactly the biases and norm weights.
    """
    decay, no_decay = [], []
    for parameter in parameters:
        (decay if parameter.ndim > 1 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The two groups of a model trained from scratch: with and without weight decay."""
    return _decay_groups(_trainable(model), weight_decay)


def classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of `model`'s classifier, inside DDP or torch.compile as well: timm's
    get_classifier(), else the last layer with parameters (torchvision's models, SmallResNet)."""
    bare = unwrap(model)
    get_classifier = getattr(bare, "get_classifier", None)
    if callable(get_classifier):
        heads = get_classifier()  # a few timm models have two heads (a tuple)
        heads = heads if isinstance(heads, (tuple, list)) else [heads]
        return [p for head in heads if isinstance(head, nn.Module) for p in head.parameters()]
    keys = set(_classifier_keys(bare))
    return [parameter for name, parameter in bare.named_parameters() if name in keys]


def split_parameter_groups(
    model: nn.Module, weight_decay: float, lr: float, tuning: FineTuning
) -> list[dict]:
    """Four groups, the classifier's two first, then the backbone's, each split by weight
    decay and carrying its part and its base learning rate (the backbone's: lr times
    tuning.backbone_lr_ratio). Group 0 is the classifier's, whose learning rate is the one
    logged (Trainer.lr: the log lines, metrics.csv, lr.csv). A group may be empty (all of
    a part frozen by model.freeze): the four keep their places.
    """
    in_classifier = {id(parameter) for parameter in classifier_parameters(model)}
    trainable = _trainable(model)
    classifier = [p for p in trainable if id(p) in in_classifier]
    backbone = [p for p in trainable if id(p) not in in_classifier]
    if tuning.head_epochs and not classifier:
        reason = "model.freeze froze it"
        if not in_classifier:
            reason = "the model has none (no Linear or Conv2d layer, no get_classifier())"
        raise ConfigError(
            f"train.freeze_epochs={tuning.head_epochs} trains the classifier alone first, "
            f"but {reason}; set train.freeze_epochs=0"
        )
    parts = ((CLASSIFIER, classifier, lr), (BACKBONE, backbone, lr * tuning.backbone_lr_ratio))
    return [
        {**group, "lr": part_lr, "part": part}
        for part, parameters, part_lr in parts
        for group in _decay_groups(parameters, weight_decay)
    ]


def build_optimizer(
    cfg: OptimConfig, model: nn.Module, tuning: FineTuning = FineTuning()
) -> torch.optim.Optimizer:
    """The optimizer for `model`, whose parameters must already be on their device."""
    if tuning.splits:
        groups = split_parameter_groups(model, cfg.weight_decay, cfg.lr, tuning)
    else:
        groups = parameter_groups(model, cfg.weight_decay)
    # One fused kernel per step instead of a few small ones per parameter: measured 1.3x
    # faster steps for a small MLP on a CPU. CPUs and CUDA GPUs have fused AdamW and SGD.
    fused = {"fused": True} if _has_fused_kernels(model) else {}
    if cfg.name == "sgd":
        nesterov = cfg.nesterov and cfg.momentum > 0
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov, **fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **fused)
    raise ValueError(f"unknown optimizer {cfg.name!r}")  # validated in config.py already


def _has_fused_kernels(model: nn.Module) -> bool:
    parameters = _trainable(model)
    return bool(parameters) and all(
        parameter.device.type in ("cpu", "cuda") and parameter.is_floating_point()
        for parameter in parameters
    )


def build_scheduler(
    cfg: SchedConfig,
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    total_steps: int,
    tuning: FineTuning = FineTuning(),
):
    """The scheduler named by `cfg.name`; see PER_STEP_SCHEDULERS for when it is stepped.

    `total_steps` is the number of optimizer steps of the whole run: train.epochs times the
    steps per epoch (train.max_steps only stops a run early; it does not shorten the schedule).
    Where the optimizer has a backbone's groups (`split_parameter_groups`), the scheduler
    sets the classifier's learning rate and the backbone's follows it (BackboneFollows).
    """
    head_steps = tuning.head_epochs * steps_per_epoch
    scheduler = _named_scheduler(cfg, optimizer, steps_per_epoch, total_steps, head_steps)
    if not any(group.get("part") == BACKBONE for group in optimizer.param_groups):
        return scheduler
    # The head-only phase in the scheduler's own steps: optimizer steps, or epochs.
    per_step = cfg.name in PER_STEP_SCHEDULERS
    head_length = head_steps if per_step else tuning.head_epochs
    return BackboneFollows(scheduler, head_length, tuning.backbone_lr_ratio)


def _named_scheduler(
    cfg: SchedConfig,
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    total_steps: int,
    head_steps: int,
):
    if cfg.name == "cosine":
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        if head_steps:
            factor = _HeadThenWholeCosine(head_steps, warmup, total_steps, cfg.min_lr_ratio)
        else:
            factor = _WarmupCosine(warmup, total_steps, cfg.min_lr_ratio)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if cfg.name == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _constant)
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma)
    if cfg.name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones, cfg.gamma)
    if cfg.name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, cfg.gamma)
    if cfg.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.gamma, patience=cfg.patience
        )
    raise ValueError(f"unknown scheduler {cfg.name!r}")  # validated in config.py already


def _constant(step: int) -> float:
    return 1.0


def _warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR factor: linear warmup from ~0 to 1, then cosine decay to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * cosine


class _WarmupCosine:
    """LR factor: linear warmup from ~0 to 1, then cosine decay to `min_ratio`.

    A class rather than a closure so that the scheduler's state_dict stays picklable (its
    attributes, plain numbers, are what LambdaLR saves of it).
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = max(total_steps, 1)
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        return _warmup_cosine(step, self.warmup_steps, self.total_steps, self.min_ratio)


class _HeadThenWholeCosine:
    """LR factor of a run that trains the classifier alone for `head_steps`: a warmup and
    cosine over those steps, then another over the rest, as fastai's fine_tune does. The
    classifier's weights have settled when the whole network starts to learn, from a rate
    near 0 again, so the large early updates of the backbone follow a useful gradient."""

    def __init__(
        self, head_steps: int, warmup_steps: int, total_steps: int, min_ratio: float
    ) -> None:
        self.head_steps = head_steps
        self.warmup_steps = warmup_steps
        self.total_steps = max(total_steps, head_steps + 1)
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.head_steps:
            return _warmup_cosine(step, self.warmup_steps, self.head_steps, self.min_ratio)
        rest = self.total_steps - self.head_steps
        return _warmup_cosine(step - self.head_steps, self.warmup_steps, rest, self.min_ratio)


class BackboneFollows:
    """A scheduler that sets the classifier's learning rate, and the backbone's after it:
    exactly 0 for the first `head_length` steps of the scheduler (the head-only phase),
    then `ratio` times the classifier's, whatever the schedule (plateau's cuts included).

    Why a learning rate of exactly 0 holds the backbone still, rather than requires_grad
    turned off: with lr 0, SGD's and AdamW's updates, weight decay and momentum included,
    leave every weight bit-identical, while the optimizer's groups and state keep one
    layout for the whole run, DDP's reducer (which refuses parameters that stop taking
    gradients after it was built) and torch.compile's graph stay as they are, and a resume
    in either phase is exact, the phase being a function of the restored step alone. The
    price: the head-only phase computes the backbone's gradients that it does not use.
    The backbone's momentum (AdamW's moments) gathers those gradients, of the same weights
    it then starts from, as a warm start. Batch norm's running statistics still follow the
    data in that phase: they are buffers, not parameters.
    """

    def __init__(self, scheduler, head_length: int, ratio: float) -> None:
        self.scheduler, self.head_length, self.ratio = scheduler, head_length, ratio
        self.optimizer = scheduler.optimizer
        self._follow()

    def step(self, *args) -> None:
        self.scheduler.step(*args)  # plateau's takes the validation loss
        self._follow()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)
        self._follow()

    @property
    def last_epoch(self) -> int:
        """The scheduler's own step count (optimizer steps, or epochs)."""
        return self.scheduler.last_epoch

    def _follow(self) -> None:
        groups = self.optimizer.param_groups
        lead = next(group["lr"] for group in groups if group["part"] == CLASSIFIER)
        in_head_phase = self.scheduler.last_epoch < self.head_length
        for group in groups:
            if group["part"] == BACKBONE:
                group["lr"] = 0.0 if in_head_phase else lead * self.ratio
