"""Holding Ctrl-C and SIGTERM while a step must not be cut in two.

Submitting is such a step: once sbatch has accepted a job, its id must reach the manifest, or the
next submit starts a second copy of every run in it. Inside `interrupts_held()` an INT, TERM or HUP
is remembered instead of acted on; code that loops (one sbatch per array) asks `interrupt_held()`
between rounds and stops early, and when the block ends the signal is delivered as it would have
been, so Ctrl-C still ends the command, only a moment later (or the block's own error ends it,
where the block stopped early because of the signal).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_held: list[int] = []  # signals received inside the current block, in order
_active: list[bool] = []  # one entry while a block holds them (a nested block adds nothing)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Run the block to its end whatever INT/TERM/HUP come, then act on them. Outside the main
    thread (where no handler can be set) the block runs unprotected."""
    if threading.current_thread() is not threading.main_thread() or _active:
        yield
        return

    def hold(signum: int, frame: Any) -> None:
        _held.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in HELD_SIGNALS}
    _active.append(True)
    ended_by_error = False
    try:
        yield
    except BaseException:
        ended_by_error = True  # the command ends with the error's own line (e.g. "interrupted: ...")
        raise
    finally:
        _active.pop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        received = list(dict.fromkeys(_held))
        _held.clear()
        if not ended_by_error:
            for signum in received:
                signal.raise_signal(signum)  # as if it came now: Ctrl-C raises KeyboardInterrupt, TERM ends us


def interrupt_held() -> bool:
    """Has an interrupt come inside the current block? (Then stop starting new work.)"""
    return bool(_held)

