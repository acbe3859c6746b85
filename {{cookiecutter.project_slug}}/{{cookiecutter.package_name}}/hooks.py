"""The hook points of a training run: where code outside the loop looks in."""

from collections.abc import Callable
from dataclasses import dataclass

from .engine import TrainState


def _nothing(state: TrainState) -> None:
    return None


@dataclass
class Hooks:
    """Where code outside the loop looks in; each is called on every process.

    A sweep ends a trial whose validation metric lags (`after_epoch`); the tests stop a run
    at an exact optimizer step or around a save, without touching the loop itself.
    """

    # After each optimizer step, before anything is saved for it.
    after_step: Callable[[TrainState], None] = _nothing
    # Around each checkpoint save (all processes take part in one).
    before_save: Callable[[TrainState], None] = _nothing
    after_save: Callable[[TrainState], None] = _nothing
    # After each epoch has been saved, with its metrics.csv row; True ends the run there.
    after_epoch: Callable[[dict], bool] = lambda row: False
