"""The one interface every executor implements, and what it answers when asked about jobs.

An executor turns run keys into jobs and answers for those jobs afterwards. It keeps whatever it
needs in its own subfolder of the sweep (`local/`, `slurm/`), so that any later process (a `status`
in another terminal, a `retry` a week on) can ask it again with nothing but the sweep folder.
Job ids are the executor's own ("L12" locally, "123_4" on Slurm); the manifest records them.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ptbjobs.core.errors import PtbjobsError
from ptbjobs.sweep.folder import Sweep
from ptbjobs.sweep.grid import Resources


@dataclass
class JobStates:
    """An executor's answer about a set of jobs."""

    states: dict[str, str]  # job id -> state (core.states); every id asked about is present
    note: str | None = None  # a line for the user beside the states (e.g. "states from squeue")
    stale: str | None = None  # set when these are the last known states, not live ones: why
    # job id -> how many times the scheduler started it, where more than once (requeued in place
    # after a time limit, a preemption or a node failure); absent where unknown
    attempts: dict[str, int] = field(default_factory=dict)

    def tries(self, job_id: str) -> int:
        return self.attempts.get(job_id, 1)


class PartialSubmission(PtbjobsError):
    """The scheduler refused a submission after accepting part of it (sbatch refused an array
    after earlier ones): `submitted` holds the runs that did go out, which the caller must still
    record, since they will run."""

    def __init__(self, message: str, submitted: dict[str, str], hint: str | None = None):
        super().__init__(message, hint)
        self.submitted = submitted


class SendLedger(Protocol):
    """Where an executor notes each batch of runs it sends (one sbatch, or a local submit), so a
    submit killed anywhere (kill -9 included) never sends a run twice: the batch is marked as being
    sent before the scheduler sees it, and its job ids recorded, with the mark cleared, as soon as
    it accepts it. A mark left by a kill is settled by the next send (`Executor.find_sent`)."""

    def sending(self, token: str, keys: list[str], per_job: int = 1) -> None: ...  # per_job: runs a job trains

    def sent(self, token: str, ids: dict[str, str]) -> None: ...


class ManifestLedger:
    """The manifest's "sending" marks (a SendLedger): token -> the batch's runs, its
    executor and when, written to the journal before the batch goes out; its job ids recorded,
    and the mark cleared, in one journal write once it is accepted."""

    def __init__(self, sweep: Sweep, manifest: dict[str, Any], executor_name: str, job_tries: dict[str, int]):
        self.sweep, self.manifest, self.executor_name, self.job_tries = sweep, manifest, executor_name, job_tries

    def sending(self, token: str, keys: list[str], per_job: int = 1) -> None:
        marks = {**self.manifest.get("sending", {}),
                 token: {"runs": keys, "per_job": per_job, "executor": self.executor_name, "time": time.time()}}
        self.sweep.update_manifest(self.manifest, sending=marks)

    def sent(self, token: str, ids: dict[str, str]) -> None:
        record_jobs(self.manifest, self.executor_name, ids, self.job_tries)
        marks = {t: mark for t, mark in self.manifest.get("sending", {}).items() if t != token}
        self.sweep.update_manifest(self.manifest, ids, sending=marks)


def record_jobs(manifest: dict[str, Any], executor_name: str, ids: dict[str, str], job_tries: dict[str, int]) -> None:
    """Append each run's new job to its manifest entry (the caller writes the entries). A job
    already recorded as the run's latest is not added again."""
    now = time.time()
    for key, job_id in ids.items():
        jobs = manifest["runs"][key]["jobs"]
        if jobs and jobs[-1]["job_id"] == job_id:
            continue
        if jobs and job_tries.get(jobs[-1]["job_id"], 1) > 1:
            # once a job is no longer the latest nobody asks its executor about it: keep its count
            jobs[-1]["tries"] = job_tries[jobs[-1]["job_id"]]
        jobs.append({"job_id": job_id, "executor": executor_name, "submitted": now})


class Executor(abc.ABC):
    name: ClassVar[str]  # what the manifest records for each job ("local", "slurm")
    # the limit on runs at once that this executor set for the sweep in this command (the local
    # executor's --max-parallel); None where it has none, or set none
    parallel_in_force: int | None = None

    @abc.abstractmethod
    def submit(self, sweep: Sweep, keys: list[str], resources: Resources,
               ledger: SendLedger | None = None) -> dict[str, str]:
        """Start a job for each run key (the run folders' spec.json written already); returns
        key -> job id. Call with the sweep lock held. Returns as soon as the jobs are queued.
        Raises PartialSubmission when some jobs went out and then the rest could not. Each batch
        is noted in `ledger` before and after it goes out, under a token the scheduler keeps."""

    @abc.abstractmethod
    def find_sent(self, sweep: Sweep, token: str, keys: list[str], per_job: int, since: float) -> dict[str, str]:
        """The jobs of a batch (`keys` in its order, `per_job` runs to a job) marked as being sent
        at `since`, whose submit was killed before it recorded them: run key -> job id, {} where
        the scheduler never got it. Raises PtbjobsError where the scheduler cannot tell (nothing may
        be sent then: it might be a second time)."""

    @abc.abstractmethod
    def query(self, sweep: Sweep, job_ids: list[str], max_age_s: float = 0.0) -> JobStates:
        """The state of each job, in one question to the scheduler at most. An answer the sweep got
        up to `max_age_s` ago may stand in for a new question (0: ask now)."""

    @abc.abstractmethod
    def cancel(self, sweep: Sweep, job_ids: list[str]) -> None:
        """Cancel the jobs; a running one is asked to save its state and stop."""

    @abc.abstractmethod
    def log_paths(self, sweep: Sweep, key: str, job_ids: list[str]) -> list[Path]:
        """The log files of a run's attempts (the given jobs), oldest first."""

    @staticmethod
    def split_attempts(log_text: str) -> list[str]:
        """One job's log cut into the output of each time it was started (a job requeued in place
        appends to its log)."""
        return [log_text]

    def still_held(self, sweep: Sweep, job_ids: list[str]) -> dict[str, str]:
        """Of jobs `query` said had ended, those the scheduler in fact still holds (queued or
        running), with their state: asked once, just before anything is resubmitted. Only Slurm
        needs it: after a node failure it requeues the job while accounting still says NODE_FAIL."""
        return {}

    def room(self, sweep: Sweep, resources: Resources) -> int | None:
        """How many more runs may go out now within the scheduler's limits; None: no limit (the
        local executor queues every run itself)."""
        return None

    def feeder_possible(self, sweep: Sweep, resources: Resources) -> bool:
        """Can a feeder job be queued at all within the scheduler's limits?"""
        return True

    def feeder_alive(self, sweep: Sweep) -> bool:
        """Is the sweep's feeder (the job that sends runs waiting for room) queued or running?"""
        return True

    def start_feeder(self, sweep: Sweep, resources: Resources) -> None:
        """Queue the sweep's feeder; it takes one of the user's slots."""

    def apply_max_parallel(self, sweep: Sweep) -> None:
        """Give the sweep this executor's limit on runs at once, when a command starts nothing.
        Only the local executor has such a limit (on Slurm it is array_parallelism)."""
