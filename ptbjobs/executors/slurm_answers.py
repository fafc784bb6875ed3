"""Asking Slurm politely: one sacct (plus one squeue where sacct lags) per sweep per interval, shared
by every command that looks at the sweep, however many terminals watch it.

    <sweep>/slurm/answer.json   Slurm's last answer about the sweep's jobs: when it came, how long
                                it took, the states, and how long it holds (the interval, doubled
                                while Slurm is slow or refuses)
    <sweep>/slurm/answer.lock   flock'ed by the one process asking; the others wait, then share its answer

Slurm's manual asks not to run sacct or squeue from loops, and sites rate-limit users who do:
`status --watch`, `submit --wait` and `logs -f` take an answer up to PTBJOBS_POLL_S old (30 s by
default), a one-off `status` one up to 5 s old. Commands about to act on the states (submit, retry,
cancel) always ask afresh: they are typed, not looped.
"""

from __future__ import annotations

import fcntl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ptbjobs.core.atomic import atomic_write_json, read_json_if_any
from ptbjobs.core.env import seconds_from_env
from ptbjobs.executors.slurm_commands import SlurmUnavailable, StateReport

DEFAULT_POLL_S = 30.0
ONE_OFF_MAX_AGE_S = 5.0  # a status typed twice in a row asks once
SLOW_ANSWER_S = 10.0  # an answer that took longer than this: the controller is busy, ask half as often
MAX_INTERVAL_S = 600.0
_clock = time.monotonic  # how long an answer took (a test sets the time it takes)


def poll_interval_s() -> float:
    """How old an answer a command that looks again and again may take: $PTBJOBS_POLL_S, else 30 s."""
    return seconds_from_env("PTBJOBS_POLL_S", DEFAULT_POLL_S, MAX_INTERVAL_S)


@dataclass
class Answer:
    """What Slurm said of a set of jobs, and when."""

    states: dict[str, str]
    attempts: dict[str, int] = field(default_factory=dict)
    note: str | None = None  # from the report: e.g. states from squeue, accounting being down
    failure: str | None = None  # Slurm did not answer: why (the states are then empty)
    time: float = 0.0
    took_s: float = 0.0
    backoff: float = 1.0  # the interval is multiplied by this while Slurm is slow or refuses

    def holds_for(self, job_ids: list[str], max_age_s: float, now: float) -> bool:
        if max_age_s <= 0 or now - self.time >= min(MAX_INTERVAL_S, max_age_s * self.backoff):
            return False
        return self.failure is not None or all(j in self.states for j in job_ids)

    def slow_note(self) -> str | None:
        """A line for the user while ptbjobs asks less often than usual."""
        if self.backoff <= 1:
            return None
        if self.failure:
            return "ptbjobs asks it less often until it answers"
        return (f"Slurm answered slowly ({self.took_s:.1f} s): ptbjobs asks it less often for now "
                f"(an answer serves up to {self.backoff:g}x the usual interval)")


def shared_answer(folder: Path, job_ids: list[str], max_age_s: float, ask: Callable[[list[str]], StateReport]) -> Answer:
    """Slurm's answer about `job_ids`: the sweep's last one if it is younger than `max_age_s` (times
    the backoff) and covers them, else asked now, once for every process that wants it meanwhile."""
    cached = _read(folder)
    if cached is not None and cached.holds_for(job_ids, max_age_s, time.time()):
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "answer.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process asking now: wait for its answer, then share it
        try:
            cached = _read(folder)
            if cached is not None and cached.holds_for(job_ids, max_age_s, time.time()):
                return cached
            answer = _ask(job_ids, ask, cached)
            try:
                atomic_write_json(folder / "answer.json", answer.__dict__)
            except OSError:
                pass  # a sweep folder someone else owns: this command still has its answer
            return answer
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def forget(folder: Path) -> None:
    """After a command changed jobs (cancelled them): the last answer no longer holds."""
    try:
        (folder / "answer.json").unlink()
    except FileNotFoundError:
        pass


def _ask(job_ids: list[str], ask: Callable[[list[str]], StateReport], before: Answer | None) -> Answer:
    start = _clock()
    backoff = before.backoff if before else 1.0
    try:
        report = ask(job_ids)
    except SlurmUnavailable as exc:
        took = _clock() - start
        return Answer({}, failure=exc.message, time=time.time(), took_s=took, backoff=min(backoff * 2, 64.0))
    took = _clock() - start
    return Answer(report.states, report.attempts, report.note, time=time.time(), took_s=took,
                  backoff=min(backoff * 2, 64.0) if took > SLOW_ANSWER_S else 1.0)


def _read(folder: Path) -> Answer | None:
    saved = read_json_if_any(folder / "answer.json")
    if not isinstance(saved, dict):
        return None
    try:
        return Answer(**saved)
    except TypeError:  # another version's answer: ask anew
        return None
