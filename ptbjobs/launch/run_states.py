"""Each run's state: what its latest job's executor says, merged with what its own folder says.
One question per executor, however many runs."""

from __future__ import annotations

from typing import Any

from ptbjobs.core import states
from ptbjobs.core.errors import PtbjobsError
from ptbjobs.executors.job import cancel_requested, read_exit_code
from ptbjobs.executors.slurm_answers import ONE_OFF_MAX_AGE_S
from ptbjobs.launch.executor_choice import get_executor
from ptbjobs.sweep.folder import Sweep, latest_job
from ptbjobs.sweep.index import read_index
from ptbjobs.train.run_dir import DamagedFile, RunDir
from ptbjobs.train.signals import RESUMABLE_EXIT_CODES


def run_states(sweep: Sweep, manifest: dict[str, Any], notes: list[str] | None = None,
               live: bool = False, damaged: dict[str, DamagedFile] | None = None,
               job_tries: dict[str, int] | None = None, held: dict[str, str] | None = None,
               indexed: dict[str, dict[str, Any]] | None = None, max_age_s: float | None = None) -> dict[str, str]:
    """Each run's state: its latest job as its executor sees it, merged with its own folder.
    What an executor says of its answer (e.g. "Slurm did not answer: last known states") is
    appended to `notes`. With `live`, last-known states are refused: a command about to submit or
    cancel must not act on them (it could start a second copy of a run that is still going).
    A run whose folder cannot be read shows DAMAGED, and what is wrong goes into `damaged`.
    `job_tries` gets how many times the executors started each latest job, where more than once.
    With `live`, a run whose job ended for the executor but which its scheduler still holds takes
    the scheduler's state, and goes into `held` too.
    Runs in the sweep index (`indexed`, read here if not given) have finished for good: neither
    their folders nor their jobs are looked at again.
    An executor's answer up to `max_age_s` old may serve (a command that looks again and again
    passes the poll interval); by default a few seconds, and none with `live`."""
    if max_age_s is None:
        max_age_s = 0.0 if live else ONE_OFF_MAX_AGE_S
    if indexed is None:
        indexed = read_index(sweep, manifest)
    by_executor: dict[str, list[str]] = {}
    for key, entry in manifest["runs"].items():
        if key in indexed or entry.get("waiting"):
            continue
        job = latest_job(entry)
        if job:
            by_executor.setdefault(job["executor"], []).append(job["job_id"])
    job_states: dict[str, str] = {}
    for name, ids in by_executor.items():
        answer = get_executor(name, submitting=False).query(sweep, ids, max_age_s)
        job_states.update(answer.states)
        if job_tries is not None:
            job_tries.update(answer.attempts)
        if live and answer.stale:
            raise PtbjobsError(answer.stale,
                               "nothing was submitted or cancelled; try again when Slurm answers (scontrol ping)")
        if notes is not None and answer.note:
            notes.append(answer.note)
    result = {}
    for key, entry in manifest["runs"].items():
        if key in indexed:
            result[key] = indexed[key]["state"]
            continue
        if entry.get("waiting"):  # not sent yet: the cluster's limit was reached (launch/feed.py)
            result[key] = states.QUEUED_LOCALLY
            continue
        job = latest_job(entry)
        try:
            folder_state = _folder_state(RunDir(sweep.run_dir(key)))
        except DamagedFile as exc:
            folder_state = states.DAMAGED
            if damaged is not None:
                damaged[key] = exc
        state = states.run_state(job_states.get(job["job_id"]) if job else None, folder_state)
        if job and (states.is_active(state) or (state in states.RETRYABLE and folder_state in (None, states.INTERRUPTED))):
            # its pack-mates may train on, holding the job, while it has ended; or it was
            # cancelled alone (saved, or before it started) in a job that has ended since. (A run
            # whose folder says it failed is FAILED either way: no file to read.)
            state = _ended_in_pack(sweep, key, job["job_id"], state, folder_state)
        result[key] = state
    if live:
        _confirm_ended(sweep, manifest, result, job_states, held if held is not None else {})
    return result


def _confirm_ended(sweep: Sweep, manifest: dict[str, Any], result: dict[str, str], job_states: dict[str, str],
                   held: dict[str, str]) -> None:
    """Runs about to be resubmitted because their job ended, checked once more with its executor:
    a job the scheduler still holds keeps its run out of the resubmission (one question per
    executor). Runs whose own folder says how they ended need no second opinion."""
    by_executor: dict[str, dict[str, str]] = {}  # executor -> job id -> run key
    for key, state in result.items():
        job = latest_job(manifest["runs"][key])
        if state in states.RETRYABLE and job and job_states.get(job["job_id"]) == state:
            by_executor.setdefault(job["executor"], {})[job["job_id"]] = key
    for name, jobs in by_executor.items():
        for job_id, state in get_executor(name, submitting=False).still_held(sweep, list(jobs)).items():
            result[jobs[job_id]] = held[jobs[job_id]] = state


def run_tries(jobs: list[dict[str, Any]], job_tries: dict[str, int]) -> int:
    """Times a run was started: its earlier jobs' counts as recorded when it was resubmitted, and
    its latest job's as its executor says now (a job requeued in place counts each start)."""
    if not jobs:
        return 0
    return sum(job.get("tries", 1) for job in jobs[:-1]) + job_tries.get(jobs[-1]["job_id"], 1)


def _folder_state(run: RunDir) -> str | None:
    """What the run folder says of the run. COMPLETED only where metrics.jsonl bears it out with its
    final record: a run whose results cannot be read is not taken for a finished one."""
    record = run.read_state()
    if record is None:
        return None
    if record["state"] == states.COMPLETED and run.final_record() is None:
        raise DamagedFile(run.metrics_path, "has no final record, though state.json says the run completed")
    return record["state"]


def _ended_in_pack(sweep: Sweep, key: str, job_id: str, state: str, folder_state: str | None = None) -> str:
    """A run packed with others (runs_per_gpu) records its exit code when it ends: FAILED where it
    failed while the job goes on, CANCELLED where `ptbjobs cancel` let it go alone (whatever
    became of the job since), PRUNED where a search paused it, else `state`."""
    code = read_exit_code(f"{sweep.path}/{key}", job_id)
    if code is None:
        return state
    if code == 0 and folder_state == states.PRUNED:
        return states.PRUNED
    if code in RESUMABLE_EXIT_CODES:
        return states.CANCELLED if cancel_requested(f"{sweep.path}/{key}", job_id) else state
    return states.FAILED if code != 0 and states.is_active(state) else state
