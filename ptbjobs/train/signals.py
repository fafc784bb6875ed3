"""How a training run is told to stop, and how it says it stopped.

USR2 (Slurm's warning before a time limit or a preemption), TERM (`scancel`, most killers) and INT
(Ctrl-C) ask the trainer to save its exact state at the next step boundary and stop; the process
then exits 75 (EX_TEMPFAIL: run it again and it resumes). No torch here: a job process installs
`defer_stop_signals` before torch is even imported.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Iterator, Protocol

from ptbjobs.core.errors import PtbjobsError

# Signals after which the run saves its state at the next step boundary and exits.
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(PtbjobsError):
    """Stopped on request (a signal) after saving the resumable state."""

    exit_code = 75  # EX_TEMPFAIL: try again, it will resume
    is_error = False
    signals: tuple[int, ...] = ()  # the signals that asked for the stop, in order


STOPPED = TrainingInterrupted.exit_code
# How a run's process may end with its state on disk current: stopped by a signal (75: saved at a
# step, or before training began), or killed by USR2/TERM before any handler was in place
RESUMABLE_EXIT_CODES = frozenset({STOPPED, -signal.SIGUSR2, -signal.SIGTERM})

# How often a pack looks for a run cancelled alone (`ptbjobs cancel --run`: a file in the run's
# folder, which on a shared filesystem is a round trip to its server; a signal needs no looking)
CANCEL_CHECK_S = 5.0

# USR2/TERM received before training began, in order; the runner stops on them
pending_stop_signals: list[int] = []


def defer_stop_signals() -> None:
    """For a process that runs one job, first thing: USR2 or TERM before training has begun
    (torch loading, the data being read) is remembered, and the runner stops on it at its next
    look, before training a step: the job ends as if stopped in training (exit 75), and the run
    resumes from its last checkpoint. One after training has ended changes nothing: the run's
    state on disk is final by then.

    Raising SystemExit from the handler instead is not reliable: code that catches every exception
    (as some does while torch is imported) swallows it, and the run trains on as if never told."""

    def remember(signum: int, frame: Any) -> None:
        pending_stop_signals.append(signum)

    for sig in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, remember)


def take_pending_stop() -> TrainingInterrupted | None:
    """The stop asked for by the signals that came while the job started (taking them), if any."""
    if not pending_stop_signals:
        return None
    stopped = TrainingInterrupted(f"stopped by {', '.join(signal.Signals(s).name for s in pending_stop_signals)} "
                                  "before training began", "run the same command to resume")
    stopped.signals = tuple(pending_stop_signals)
    pending_stop_signals.clear()
    return stopped


class Stoppable(Protocol):
    """What a signal handler may ask of the trainer: flags only, safe from a handler."""

    @property
    def stop_requested(self) -> bool: ...
    def request_checkpoint(self, stop: bool = False, reason: str = "on request") -> None: ...


@contextlib.contextmanager
def stop_on_signals(trainer: Stoppable, received: list[int], enabled: bool = True) -> Iterator[None]:
    """While training, turn USR2/TERM/INT into "checkpoint at the next step, then stop"; a second
    Ctrl-C stops at once. Appends the signals received to `received`, in order. One that came while
    the job started (and after the last look for it) stops the run before its first step."""
    if not enabled:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and trainer.stop_requested:
            raise KeyboardInterrupt
        received.append(signum)
        trainer.request_checkpoint(stop=True, reason=f"by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        stopped = take_pending_stop()  # looked at with the handlers in place: none can fall in between
        if stopped is not None:
            received.extend(stopped.signals)
            raise stopped
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
