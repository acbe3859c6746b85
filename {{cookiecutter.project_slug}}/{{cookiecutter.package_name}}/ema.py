"""An exponential moving average (EMA) of the model's weights, for train.ema_decay > 0.

After every optimizer step, each floating-point tensor of the model's state (weights and
batch-norm statistics alike) moves the average a little towards itself:

    average = decay * average + (1 - decay) * current
    decay = min(train.ema_decay, (1 + n) / (10 + n)) after n updates

 The warm-up keeps the average from dragging the random initial weights
along for thousands of steps (at n = 0 the decay is 0.1; it reaches 0.999 after ~9,000
updates). Integer tensors (batch-norm's step counter) are copied. The average usually
validates better than the weights themselves late in training, at no cost in steps: it is
validated each epoch beside them, chooses best.pt, and is what evaluate, predict and export
use. It is kept in every checkpoint, so a resumed run goes on with the very same average.
"""

import copy

import torch
from torch import nn

from .checkpoint import unwrap

WARMUP_UPDATES = 10  # n in the decay's warm-up: (1 + n) / (WARMUP_UPDATES + n)


class WeightAverage:
    """The averaged copy of a model (`.model`, in eval mode, never trained directly)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self._source = unwrap(model)
        self._pairs = None  # (averaged floats, current floats, averaged others, current others)

    def decay_now(self) -> float:
        return min(self.decay, (1 + self.updates) / (WARMUP_UPDATES + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's current weights (after an optimizer step)."""
        if self._pairs is None:
            self._pairs = _tensor_pairs(self.model, self._source)
        averaged, current, averaged_others, current_others = self._pairs
        # One fused operation for all tensors: a per-tensor loop would cost ~10 us each.
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay_now())
        for target, source in zip(averaged_others, current_others, strict=True):
            target.copy_(source)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"weights": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["weights"])
        self.updates = int(state["updates"])


def _tensor_pairs(averaged: nn.Module, current: nn.Module) -> tuple[list, list, list, list]:
    """The tensors of both models' state, in the same order: floating-point ones (averaged)
    and the others (copied)."""
    mine = averaged.state_dict(keep_vars=True)
    theirs = current.state_dict(keep_vars=True)
    floats, others = ([], []), ([], [])
    for name, tensor in mine.items():
        group = floats if tensor.is_floating_point() else others
        group[0].append(tensor.detach())
        group[1].append(theirs[name].detach())
    return floats[0], floats[1], others[0], others[1]


def inference_weights(checkpoint: dict) -> dict:
    """The weights to predict with: the moving average of the weights where the run kept
    one (train.ema_decay; it chose best.pt), else the weights themselves."""
    average = checkpoint.get("ema")
    return average["weights"] if average else checkpoint["model"]
