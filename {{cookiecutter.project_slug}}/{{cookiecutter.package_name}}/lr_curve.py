"""The curve of a learning-rate range test (`python train.py --find-lr`, see lr_find.py):
the rates it sweeps, the smoothed loss, when to stop, the rate it suggests, and the files
that keep it, lr_find.csv and lr_find.png. Plain numbers, no torch: the rule can be tried
on made-up curves.

The test (Smith, "Cyclical Learning Rates for Training Neural Networks", 2017; fastai's
lr_find): the learning rate rises exponentially, one optimizer step at each value, from
START_LR to END_LR over STEPS steps, as the model trains from its initial weights. The loss
first stays flat (too small a rate to learn), then falls, then rises fast once the rate is
too large. One step's loss is noisy, so the curve read is its exponential moving average
with bias correction, and the sweep stops once that exceeds DIVERGED times its minimum or
the loss is no longer finite: the rates beyond teach nothing. SMOOTHING is 0.95, as in
torch-lr-finder, not fastai's 0.98: an average over ~50 steps spans 4 of the sweep's 8
decades, and on the built-in shapes it showed a fall of 3% where the loss fell 8%.

The suggestion: a tenth of the rate where the smoothed loss was lowest (fastai's
`lr_min`). The minimum is the edge where training starts to blow up; a tenth of it lies
on the falling slope, where the loss still fell fast. It is read from the minimum rather
than from the steepest slope because a minimum of a smoothed curve moves little with the
noise, while the slope of a noisy curve can be steepest almost anywhere. A curve without a
clear minimum gets no suggestion, with the reason: one whose smoothed loss never fell
clearly below the loss at its start, that is by MIN_FALL of it and by NOISE times the
spread of the first losses (a flat or noisy curve, or a model that cannot learn in so few
steps), one that diverged within a decade of the smallest rate (a tenth of its minimum
would lie outside the sweep), and one of fewer than MIN_STEPS steps.
"""

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

# From 1e-7, where no optimizer changes the weights measurably, to 10, past where AdamW
# (best near 1e-3) and SGD with momentum (near 0.1) diverge: one fixed range serves both,
# and does not depend on optim.lr, the setting whose value is in question.
START_LR, END_LR = 1e-7, 10.0
STEPS = 100  # fastai's: 12.5 steps per decade
SMOOTHING = 0.95
DIVERGED = 4.0
# A clear minimum: the smoothed loss falls 2% below the loss at the start, and 3 times the
# standard deviation of the first losses (noise that the average would not hide).
MIN_FALL, NOISE = 0.02, 3.0
MIN_STEPS = 5
CSV_COLUMNS = ("step", "lr", "loss", "smoothed_loss")


def sweep_rates(start: float, end: float, steps: int) -> list[float]:
    """The learning rate of each step: from `start` to `end`, rising exponentially."""
    if steps == 1:
        return [start]
    return [start * (end / start) ** (step / (steps - 1)) for step in range(steps)]


@dataclass
class Curve:
    """The losses of the sweep so far, step by step, and their moving average."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    average: float = 0.0

    def add(self, lr: float, loss: float) -> None:
        """Record the loss of the step trained at `lr`."""
        self.average = SMOOTHING * self.average + (1 - SMOOTHING) * loss
        # Bias correction: the average starts at 0, so early on it is divided up to size.
        smoothed = self.average / (1 - SMOOTHING ** (len(self.losses) + 1))
        self.lrs.append(lr)
        self.losses.append(loss)
        self.smoothed.append(smoothed if math.isfinite(smoothed) else math.nan)

    @property
    def diverged(self) -> bool:
        """Whether the last smoothed loss is past DIVERGED times the lowest, or not finite."""
        if not self.smoothed:
            return False
        last = self.smoothed[-1]
        if not math.isfinite(last):
            return True
        return last > DIVERGED * min(value for value in self.smoothed if math.isfinite(value))


@dataclass(frozen=True)
class Suggestion:
    """The suggested learning rate (None where the curve has no clear minimum), and why."""

    lr: float | None
    reason: str


def suggest(lrs: list[float], losses: list[float], smoothed: list[float]) -> Suggestion:
    """A tenth of the rate of the smoothed loss's minimum, where the curve has a clear one
    (see the module docstring)."""
    finite = [step for step, value in enumerate(smoothed) if math.isfinite(value)]
    if len(finite) < MIN_STEPS:
        steps = f"{len(finite)} step" + ("" if len(finite) == 1 else "s")
        return Suggestion(
            None,
            f"the loss diverged at once: {steps} with a finite loss, fewer than the "
            f"{MIN_STEPS} a minimum needs",
        )
    best = min(finite, key=lambda step: smoothed[step])
    # The loss at the start: the median of the first tenth of the steps, which one noisy
    # batch does not move; their spread is the noise a fall must stand out from.
    first = [losses[step] for step in finite[: max(len(finite) // 10, 3)]]
    start = statistics.median(first)
    needed = max(MIN_FALL * start, NOISE * statistics.stdev(first))
    if not start - smoothed[best] >= needed > 0:
        return Suggestion(
            None,
            f"the smoothed loss fell {max(start - smoothed[best], 0.0):.3g} at most below its "
            f"start ({start:.4g}), less than the {needed:.3g} a clear minimum needs: the "
            "curve is flat or noisy",
        )
    lr = lrs[best] / 10
    if lr < lrs[0]:
        return Suggestion(
            None,
            f"the smoothed loss was lowest at lr {lrs[best]:.2g}, within a decade of the "
            f"smallest rate swept ({lrs[0]:.2g}), and rose after: no clear minimum",
        )
    lr = float(f"{lr:.2g}")  # two significant digits: the rule is no more precise
    reason = (
        f"a tenth of {lrs[best]:.2g}, the rate where the smoothed loss was lowest "
        f"({smoothed[best]:.4g}, from {start:.4g} at the start)"
    )
    if best == finite[-1]:
        reason += "; the loss still fell at the sweep's last step, so a larger rate may do"
    return Suggestion(lr, reason)


def write_csv(path: Path, curve: Curve) -> None:
    """lr_find.csv: one row per step (from 1), with its rate, loss and smoothed loss."""
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        rows = zip(curve.lrs, curve.losses, curve.smoothed, strict=True)
        for step, (lr, loss, smoothed) in enumerate(rows, start=1):
            writer.writerow([step, repr(lr), repr(loss), repr(smoothed)])


def draw(path: Path, curve: Curve, suggestion: Suggestion) -> None:
    """lr_find.png: the loss and the smoothed loss against the rate (on a log axis), the
    suggested rate marked where there is one."""
    from .plots import _pyplot, _save  # matplotlib is imported only when drawing

    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(curve.lrs, curve.losses, color="tab:blue", alpha=0.3, label="loss")
    axes.plot(curve.lrs, curve.smoothed, color="tab:blue", label="smoothed loss")
    curves = ["loss", "smoothed loss"]
    if suggestion.lr is not None:
        label = f"suggested lr {suggestion.lr:g}"
        axes.axvline(suggestion.lr, color="tab:green", linestyle="--", label=label)
        curves.append("suggestion")
        title = f"learning-rate range test: suggested lr {suggestion.lr:g}"
    else:
        title = "learning-rate range test: no clear minimum"
    axes.set_xscale("log")
    finite = [value for value in curve.smoothed if math.isfinite(value)]
    if finite:  # the rise past the minimum would squash the valley into a flat line
        low, high = min(finite), min(max(finite), DIVERGED * min(finite))
        axes.set_ylim(low - 0.05 * (high - low + 1e-12), high + 0.05 * (high - low + 1e-12))
    axes.set(xlabel="learning rate (optim.lr)", ylabel="training loss", title=title)
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    _save(figure, path, plt, tuple(curves))
