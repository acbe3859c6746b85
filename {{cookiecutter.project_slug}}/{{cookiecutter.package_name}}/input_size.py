"""The automatic data.image_size of a training run: from the images and this machine's speed.

data/survey.py proposes the largest side the images hold (their median shorter side; a
pretrained model's own side where its weights are used). Larger inputs see more, but cost
time in proportion to their pixels, so the side is lowered until the whole run's model
compute, estimated from timed training steps of the chosen model at that side on this
device, fits a budget: TIME_BUDGET_S for up to BUDGET_IMAGES training images, and as much
again for every further BUDGET_IMAGES (a larger collection is worth a longer run). Small
images never get here: a median side of SMALLEST_SIDE or less is used as it is, untimed.

The timing runs on a copy of the model with random weights, inside torch.random.fork_rng:
the run's own initialisation and augmentation draw exactly the numbers they would with the
side given as a setting.
"""

import dataclasses
import math
import time

import torch
from torch import nn

from .config import Config
from .data.bundle import DataBundle
from .data.survey import (
    SMALLEST_SIDE,
    ImageSurvey,
    SizeChooser,
    candidate_sides,
    size_from_data,
)
from .device import precision
from .log import counted
from .model import build_model, run_blank
from .pretrained import published_weights_file, weights_preprocessing
from .recipe import automatic_epochs, with_setting
from .resume import build_data
from .runs import RunFolder

# Model compute only: loading, validation and the start take the rest of a minute for the
# recipe benchmark's collections of up to 2,000 images (bench/recipe.py's 60 s goal).
TIME_BUDGET_S = 40.0
BUDGET_IMAGES = 2000
TIMING_BATCH = 16  # images per timed step: enough to keep a CPU's threads or a GPU busy
# After one warm-up step, at least MIN_TIMED_STEPS are timed, and more, up to MAX_TIMED_STEPS,
# while they have taken less than TIMING_S: the fastest counts. On a machine shared with
# other work a step can take many times its due (threads waiting on busy cores); the
# fastest of several is what the run itself mostly sees.
MIN_TIMED_STEPS, MAX_TIMED_STEPS, TIMING_S = 3, 12, 0.5
PROBE_SIDE = 64  # timed first: cheap on any device


def size_chooser(
    cfg: Config, device: torch.device, ceiling: int | None = None, world_size: int = 1
) -> SizeChooser:
    """The chooser build_datasets calls with the survey of the training images; `ceiling`
    is a pretrained model's own side (its weights' input size), which caps the choice.
    Under DDP each process trains its share of the images: the time is that of a share."""

    def choose(survey: ImageSurvey, classes: int, train_images: int) -> tuple[int, str]:
        candidates = candidate_sides(survey, ceiling)
        top, reason = size_from_data(survey, ceiling)
        if top <= SMALLEST_SIDE:
            return top, reason
        timer = StepTimer(cfg, device, survey.channels, classes)
        candidates = timer.taken_sides(candidates)
        if len(candidates) == 1:  # e.g. a vision transformer of one input size
            return candidates[0], f"{reason}; the only side model.name={cfg.model.name} takes"
        share = math.ceil(train_images / world_size)
        epochs = planned_epochs(cfg, share)
        budget = TIME_BUDGET_S * max(1.0, share / BUDGET_IMAGES)
        side, seconds = fitting_side(timer, candidates, share * epochs, budget)
        work = f"{counted(epochs, 'epoch')} of {counted(share, 'image')}"
        if side == candidates[-1]:
            return side, f"{reason}; ~{_minutes(seconds)} for {work} on {device.type}"
        return side, (
            f"{reason}, lowered to fit {_minutes(budget)} of model compute for {work} on "
            f"{device.type}: ~{_minutes(seconds)} at {side} px, timed"
        )

    return choose


def planned_epochs(cfg: Config, train_images: int) -> int:
    """train.epochs, or what the recipe will choose for this many images (recipe.py)."""
    return cfg.train.epochs or automatic_epochs(train_images, cfg.model.pretrained)


def fitting_side(
    timer: "StepTimer", candidates: list[int], image_steps: int, budget: float
) -> tuple[int, float]:
    """(the largest of `candidates` (ascending) whose estimated time for `image_steps` fits
    `budget`, the smallest when none does; that estimate).

    A cheap side is timed first (PROBE_SIDE or the nearest below), then the side its time
    says would fit, were time proportional to the pixels (about so: a little less for small
    inputs), and so on between the largest side found to fit and the smallest found not to:
    two or three timings, and never a long one at a side far beyond the budget."""
    fits, fails = None, None  # the largest side timed within the budget, the smallest beyond
    side = max([s for s in candidates if s <= PROBE_SIDE] or candidates[:1])
    while True:
        seconds = timer.estimate(side, image_steps)
        if seconds <= budget:
            fits = side
        else:
            fails = side
        untried = [
            s for s in candidates if (fits is None or s > fits) and (fails is None or s < fails)
        ]
        if not untried:
            break
        limit = side * math.sqrt(budget / seconds)
        side = max([s for s in untried if s <= limit] or [untried[0]])
    chosen = fits or candidates[0]
    return chosen, timer.estimate(chosen, image_steps)


class StepTimer:
    """Seconds per training image at a given side: the run's model (random weights), its
    memory layout and precision, forward, backward and an SGD step, on its device."""

    def __init__(self, cfg: Config, device: torch.device, channels: int, classes: int) -> None:
        self.cfg, self.device, self.channels, self.classes = cfg, device, channels, classes
        self.per_image: dict[int, float] = {}

    def taken_sides(self, sides: list[int]) -> list[int]:
        """The sides of `sides` the model runs on (a vision transformer takes one; some
        models need a least side): all of them when the largest and smallest run, else each
        tried on a blank image. None taken: the largest, for check_input_size to explain."""
        with torch.random.fork_rng(devices=_cuda_devices(self.device)):
            model = self._model()
        if all(_takes(model, self.channels, side) for side in (sides[0], sides[-1])):
            return sides
        return [side for side in sides if _takes(model, self.channels, side)] or sides[-1:]

    def _model(self) -> nn.Module:
        model_cfg = dataclasses.replace(self.cfg.model, weights=None, pretrained=False, freeze=[])
        return build_model(model_cfg, self.classes, self.channels)

    def estimate(self, side: int, image_steps: int) -> float:
        if side not in self.per_image:
            with torch.random.fork_rng(devices=_cuda_devices(self.device)):
                self.per_image[side] = self._time(side)
        return self.per_image[side] * image_steps

    def _time(self, side: int) -> float:
        model = self._model().to(self.device)
        layout = torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format
        model = model.to(memory_format=layout).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
        numerics = precision(self.cfg.train, self.device)
        images = torch.randn(TIMING_BATCH, self.channels, side, side, device=self.device)
        images = images.contiguous(memory_format=layout)
        labels = torch.arange(TIMING_BATCH, device=self.device) % self.classes
        _train_step(model, optimizer, numerics, images, labels)  # warms caches, allocators
        steps, spent, fastest = 0, 0.0, math.inf
        while steps < MIN_TIMED_STEPS or (spent < TIMING_S and steps < MAX_TIMED_STEPS):
            _sync(self.device)
            start = time.perf_counter()
            _train_step(model, optimizer, numerics, images, labels)
            _sync(self.device)
            took = time.perf_counter() - start
            steps, spent, fastest = steps + 1, spent + took, min(fastest, took)
        return fastest / TIMING_BATCH


def _takes(model: nn.Module, channels: int, side: int) -> bool:
    try:
        run_blank(model, channels, side)
    except (RuntimeError, AssertionError, ValueError):
        return False
    return True


def _train_step(model: nn.Module, optimizer, numerics, images, labels) -> None:
    with numerics.autocast():
        loss = nn.functional.cross_entropy(model(images), labels)
    numerics.scaler.scale(loss).backward()
    numerics.scaler.step(optimizer)
    numerics.scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cuda_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def build_run_data(
    cfg: Config, run: RunFolder, resume: tuple | None, team, device: torch.device
) -> tuple[Config, DataBundle]:
    """The data of this run (train.py's, --find-lr's), and `cfg` with the input settings that
    a fresh run left null chosen as the data was built: the side and flips from the images,
    and with pretrained weights their own normalisation and resampling (data/survey.py). A
    resumed run has all of them, and its statistics, from its checkpoint."""
    weights = None
    if resume is None and cfg.model.pretrained:
        published_weights_file(cfg.model.name).required()  # missing: one line, before any data
        weights = weights_preprocessing(cfg.model.name)
    ceiling = weights.crop_size if weights is not None else None
    chooser = size_chooser(cfg, device, ceiling, team.world_size)
    data = build_data(cfg, run, resume, team, chooser, weights)
    return apply_chosen(cfg, data), data


def apply_chosen(cfg: Config, data: DataBundle) -> Config:
    """`cfg` with the data settings chosen while the data was built (see data/survey.py)."""
    for name, value in data.chosen.items():
        cfg = with_setting(cfg, f"data.{name}", value)
    return cfg
