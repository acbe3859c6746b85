"""When a command stops early: a run before its last epoch (Ctrl-C, SIGTERM, SIGHUP,
SIGUSR1, or train.max_steps), and export.py or evaluate.py while they write their files."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # engine imports torch, which sweep.py's handling of signals does not need
    from .engine import TrainState

logger = logging.getLogger(__name__.rsplit(".", 1)[0])
# Signals that ask a run to save and stop besides Ctrl-C and SIGTERM (Windows has none):
# SIGHUP, which a closed terminal or ssh session sends (its default ends the process at
# once), and SIGUSR1, a cluster's notice before a job's time limit.
STOP_NOTICES = tuple(
    getattr(signal, name) for name in ("SIGHUP", "SIGUSR1") if hasattr(signal, name)
)
# Signals that end a command which writes files (export.py, evaluate.py): see StopWriting.
ENDING_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def _takes_over(signum: int) -> bool:
    """Whether to handle `signum`: all but a SIGHUP that this process was started to ignore
    (`nohup python train.py &` asks to go on after the terminal closes)."""
    hangup = getattr(signal, "SIGHUP", None)
    return not (signum == hangup and signal.getsignal(signum) == signal.SIG_IGN)


class GracefulStop:
    """Ctrl-C, SIGTERM, SIGHUP or SIGUSR1: finish the current step, save, and exit with 128
    + the signal's number. A second Ctrl-C exits at once (the last checkpoint on disk stays
    intact either way). SIGHUP comes when the terminal or ssh session of a run closes (under
    nohup, which ignores it, it stays ignored). SIGUSR1 is the notice a cluster sends before
    a job's time limit (scripts/slurm.sbatch asks SLURM for it): the run saves, and the
    requeued job goes on.

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
            for signum in filter(_takes_over, self.SIGNALS):
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


class StoppedBySignal(BaseException):
    """A signal ended a command that writes files (see StopWriting). A BaseException, as
    KeyboardInterrupt is: no `except Exception` on the way may take it for an error."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopWriting:
    """Ctrl-C, SIGTERM or SIGHUP during export.py or evaluate.py: stop at once, with each set
    of output files whole or absent.

    A set is made in a staging folder (files.staged_files) and moved into place at the end.
    A signal before that raises StoppedBySignal where the command is; the staging folder is
    removed on the way out, so nothing was written. While a set moves into place (`placing`)
    a signal waits until the set is in place. `placed` lists the sets that are.
    """

    def __init__(self) -> None:
        self.holding, self.held = 0, None
        self.placed: list[Path] = []
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in filter(_takes_over, ENDING_SIGNALS):
                self.previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.holding:
            self.held = self.held or signum
            return
        raise StoppedBySignal(signum)

    @contextlib.contextmanager
    def hold(self, placed: list[Path]) -> Iterator[None]:
        self.holding += 1
        try:
            yield
            self.placed.extend(placed)
        finally:
            self.holding -= 1
        if not self.holding and self.held is not None:
            signum, self.held = self.held, None
            raise StoppedBySignal(signum)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def placing(placed: Iterable[Path] = ()) -> Iterator[None]:
    """Hold back the signals of a StopWriting command for the block, which moves the files
    `placed` into place (none: it cleans up); without such a command, just run the block."""
    handler = signal.getsignal(signal.SIGTERM)
    owner = getattr(handler, "__self__", None)
    if not isinstance(owner, StopWriting):
        yield
        return
    with owner.hold(list(placed)):
        yield


def exit_code_unless_stopped(function: Callable[..., int], *args, **kwargs) -> int:
    """`function(*args, **kwargs)` (an entry point's errors.exit_code_of) under StopWriting:
    a signal ends it with one line saying what was written, and 128 + its number."""
    guard = StopWriting()
    try:
        return function(*args, **kwargs)
    except StoppedBySignal as stop:
        name = signal.Signals(stop.signum).name
        if guard.placed:
            written = ", ".join(str(path) for path in guard.placed)
            print(f"stopped by {name} after writing {written} whole", file=sys.stderr)
        else:
            print(f"stopped by {name}: nothing was written", file=sys.stderr)
        return 128 + stop.signum
    finally:
        guard.restore()
