"""When a run stops before its last epoch: Ctrl-C, SIGTERM, SIGUSR1, or train.max_steps."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # engine imports torch, which sweep.py's handling of signals does not need
    from .engine import TrainState

logger = logging.getLogger(__name__.rsplit(".", 1)[0])
# Signals that ask a run to save and stop besides Ctrl-C and SIGTERM (Windows has none).
STOP_NOTICES = tuple(getattr(signal, name) for name in ("SIGUSR1",) if hasattr(signal, name))


class GracefulStop:
    """Ctrl-C, SIGTERM or SIGUSR1: finish the current step, save, and exit with 128 + the
    signal's number. A second Ctrl-C exits at once (the last checkpoint on disk stays intact
    either way). SIGUSR1 is the notice a cluster sends before a job's time limit
    (scripts/slurm.sbatch asks SLURM for it): the run saves, and the requeued job goes on.

    Installed from the first moment of a run, so that a signal during set-up is a request
    like any other, never a KeyboardInterrupt inside a library that may swallow it (OmegaConf
    turns one into an unrelated error). One GracefulStop may hold another: a sweep's covers
    the whole study, and each trial's takes over the signals while it trains; the inner one
    starts with a request the outer one already got, and passes new ones out.
    """

    # SIGINT first: a GracefulStop finds the one it holds from that signal's handler.
    SIGNALS = (signal.SIGINT, signal.SIGTERM, *STOP_NOTICES)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous = {}
        self.outer: GracefulStop | None = None
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
            self.outer = _owner(self.previous[signal.SIGINT])
            if self.outer is not None:
                self.received = self.outer.received

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        if self.outer is not None:
            self.outer.received = signum
        logger.warning(
            "%s received: finishing this step, then saving (Ctrl-C again to quit now)",
            signal.Signals(signum).name,
        )

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _owner(handler) -> GracefulStop | None:
    """The GracefulStop whose method `handler` is, if it is one."""
    owner = getattr(handler, "__self__", None)
    return owner if isinstance(owner, GracefulStop) else None


def active_stop() -> GracefulStop | None:
    """The GracefulStop that holds the signals of this process now, if one does."""
    return _owner(signal.getsignal(signal.SIGINT))


class StopRequests:
    """Whether to stop after this step: train.max_steps reached, or a signal received on
    any process (`vote` makes all processes agree, see processes.SingleProcess.stop_vote)."""

    def __init__(self, max_steps: int, vote: Callable[[bool], bool], signals: GracefulStop) -> None:
        self.max_steps = max_steps
        self.vote = vote
        self.signals = signals

    def __call__(self, state: TrainState) -> bool:
        if self.max_steps and state.global_step >= self.max_steps:
            return True
        return self.vote(self.signals.received is not None)

    @property
    def signal(self) -> int | None:
        """The signal that stopped the run, if one did."""
        return self.signals.received
