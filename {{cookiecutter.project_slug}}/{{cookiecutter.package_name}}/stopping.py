"""When a run stops before its last epoch: Ctrl-C, SIGTERM, or train.max_steps."""

import logging
import signal
import threading
from collections.abc import Callable

from .engine import TrainState

logger = logging.getLogger(__name__.rsplit(".", 1)[0])


class GracefulStop:
    """Ctrl-C or SIGTERM: finish the current step, save, and exit. A second Ctrl-C exits
    at once (the last checkpoint on disk stays intact either way)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        logger.warning(
            "%s received: finishing this step, then saving (Ctrl-C again to quit now)",
            signal.Signals(signum).name,
        )

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class StopRequests:
    """Whether to stop after this step: train.max_steps reached, or a signal received on
    any process (`vote` makes all processes agree, see processes.SingleProcess.stop_vote)."""

    def __init__(self, max_steps: int, vote: Callable[[bool], bool]) -> None:
        self.max_steps = max_steps
        self.vote = vote
        self.signals = GracefulStop()

    def __call__(self, state: TrainState) -> bool:
        if self.max_steps and state.global_step >= self.max_steps:
            return True
        return self.vote(self.signals.received is not None)

    @property
    def signal(self) -> int | None:
        """The signal that stopped the run, if one did."""
        return self.signals.received

    def close(self) -> None:
        """Give the signals back to the handlers they had before."""
        self.signals.restore()
