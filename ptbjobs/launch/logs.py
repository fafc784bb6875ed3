"""`ptbjobs logs`: a run's output, every attempt in order, and following the latest as it grows."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ptbjobs.core import states
from ptbjobs.core.errors import ConfigError
from ptbjobs.executors.slurm_answers import ONE_OFF_MAX_AGE_S, poll_interval_s
from ptbjobs.launch.executor_choice import get_executor
from ptbjobs.launch.run_states import run_states
from ptbjobs.sweep.folder import Sweep


@dataclass
class AttemptLog:
    job_id: str
    executor: str
    path: Path  # may not exist yet: the job has not written anything


def attempt_logs(sweep: Sweep, key: str) -> list[AttemptLog]:
    """The log files of every job the run has had, oldest first. An attempt may have more than one
    (a packed run: its own log, then its task's)."""
    manifest = sweep.read_manifest()
    if key not in manifest["runs"]:
        raise ConfigError(None, f"no run {key!r} in {sweep.path}", "see `ptbjobs status` for the keys")
    jobs = manifest["runs"][key]["jobs"]
    if jobs:  # asked after, the latest job's executor gets a stalled local queue moving again
        get_executor(jobs[-1]["executor"], submitting=False).query(sweep, [jobs[-1]["job_id"]], ONE_OFF_MAX_AGE_S)
    logs = []
    for job in jobs:
        executor = get_executor(job["executor"], submitting=False)
        logs += [AttemptLog(job["job_id"], job["executor"], path)
                 for path in executor.log_paths(sweep, key, [job["job_id"]])]
    return logs


def log_sections(log: AttemptLog) -> list[str]:
    """An attempt's log as the output of each time its job was started (a job requeued in place,
    after a time limit, a preemption or a node failure, appends to its log); [] before it wrote."""
    if not log.path.exists():
        return []
    return get_executor(log.executor, submitting=False).split_attempts(log.path.read_text(errors="replace"))


def latest_attempt_paths(logs: list[AttemptLog]) -> list[Path]:
    """The log files of the run's latest attempt (what `logs -f` follows: the first of them)."""
    if not logs:
        return []
    return [log.path for log in logs if log.job_id == logs[-1].job_id]


def run_is_active(sweep: Sweep, key: str) -> bool:
    """Asked every second by `logs -f`: Slurm's answer is shared, asked at most once per poll interval."""
    return states.is_active(run_states(sweep, sweep.read_manifest(), max_age_s=poll_interval_s())[key])


def follow(path: Path, active: Callable[[], bool], every_s: float = 1.0) -> Iterator[str]:
    """What is appended to `path` from now on, as it comes, until `active()` says the run has
    ended (what it wrote last included)."""
    position = path.stat().st_size if path.exists() else 0
    while True:
        if path.exists():
            with open(path) as handle:
                handle.seek(position)
                chunk = handle.read()
                position = handle.tell()
            yield chunk
        if not active():
            return
        time.sleep(every_s)
