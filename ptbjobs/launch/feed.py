"""Feeding a sweep within the cluster's limits.

A cluster caps the jobs one user may have queued or running (MaxSubmitJobs: 100 to 20,000 at real
centres; every array task counts), and all users' together (MaxJobCount, 10,000 by default). A
submit sends the runs that fit (Executor.room: one squeue call, the limits asked once per 10
minutes); the others wait in the sweep, QUEUED_LOCALLY (`"waiting": true` in their manifest
entries), in the order they were planned, and go out as room frees, with no one typing `submit`:

- the sweep's feeder: a job of one CPU, queued in a slot kept for it when runs first wait
  (SlurmExecutor.start_feeder), runs `ptbjobs feed --as-feeder` and requeues itself while any still
  wait. The tasks cannot do it alone: a task counts against the limit while it runs, so a feed from
  inside it finds no room for what its own end frees, and a round of tasks ending together stalls.
- each Slurm task, as it ends for good (not when it is requeued), runs `ptbjobs feed`, which sends
  runs into room that tasks ended before it freed.
- `submit --wait` feeds once per poll interval while it watches, and any `submit` or `retry` feeds
  (and queues a feeder again where none is left).
- `status` feeds where runs wait and none of the sweep's jobs is queued or running.

Every feed holds the sweep lock from its count of the queue to the job ids in the manifest, so two
tasks ending together cannot both fill the same room, and no run is sent twice.
"""

from __future__ import annotations

import time
from typing import Any

from ptbjobs.core import states
from ptbjobs.core.errors import PtbjobsError
from ptbjobs.core.interrupts import interrupts_held
from ptbjobs.executors.base import Executor, ManifestLedger, PartialSubmission, record_jobs
from ptbjobs.executors.slurm_answers import poll_interval_s
from ptbjobs.launch.executor_choice import get_executor
from ptbjobs.sweep.folder import Sweep, run_config
from ptbjobs.sweep.grid import Resources, parse_grid
from ptbjobs.train.config import fusion_key


def waiting_runs(manifest: dict[str, Any]) -> list[str]:
    """The runs waiting to be sent, in order: a search's promoted runs first (as ASHA does: a run
    that earned its next epochs goes before one not yet started), then the others as planned."""
    waiting = [key for key, entry in manifest["runs"].items() if entry.get("waiting")]
    return sorted(waiting, key=lambda key: not manifest["runs"][key].get("promoted"))


def send(sweep: Sweep, manifest: dict[str, Any], executor: Executor, keys: list[str], resources: Resources,
         job_tries: dict[str, int]) -> dict[str, str]:
    """Submit, in order, the runs already waiting and then `keys`, as many as the executor has room
    for; the rest wait (recorded in the manifest), and the sweep's feeder is queued to send them
    (in a slot kept for it). Returns run key -> job id of those sent. Call with the lock held."""
    found = settle_sending(sweep, manifest, executor, resources, job_tries)
    candidates = [k for k in waiting_runs(manifest) if k not in keys] + list(keys)
    candidates = [k for k in candidates if k not in found]  # a killed submit sent them
    room = executor.room(sweep, resources)
    feeder_needed = (room is not None and room < len(candidates) and not executor.feeder_alive(sweep)
                     and executor.feeder_possible(sweep, resources))  # else `status` and `submit --wait` feed
    if feeder_needed:
        room = max(0, room - resources.runs_per_gpu)  # one job's slot kept for the feeder
    going = candidates if room is None else candidates[:room]
    if resources.fuse:
        going = _by_shape(manifest, going)
    _mark_waiting(sweep, manifest, candidates[len(going):])
    sent: dict[str, str] = {}
    if going:
        waited = {k for k in going if manifest["runs"][k].pop("waiting", None)}  # recorded with the run's job id
        for key in going:
            manifest["runs"][key].pop("promoted", None)
        try:
            sent = submit_and_record(sweep, manifest, executor, going, resources, job_tries)
        except PartialSubmission as exc:
            # those that waited wait on; new ones stay unsent, as the error says (submit sends them)
            for key in waited - set(exc.submitted):
                manifest["runs"][key]["waiting"] = True
            raise
    if feeder_needed:
        executor.start_feeder(sweep, resources)
    return sent


def _by_shape(manifest: dict[str, Any], keys: list[str]) -> list[str]:
    """The runs with runs of the same shape next to each other (first come, first placed), so that
    packs of runs_per_gpu cut from them in order can train fused (`fuse` in [resources])."""
    groups: dict[tuple, list[str]] = {}
    for key in keys:
        groups.setdefault(fusion_key(run_config(manifest, manifest["runs"][key])), []).append(key)
    return [key for group in groups.values() for key in group]


def _mark_waiting(sweep: Sweep, manifest: dict[str, Any], keys: list[str]) -> None:
    changed = [k for k in keys if not manifest["runs"][k].get("waiting")]
    for key in changed:
        manifest["runs"][key]["waiting"] = True
    if changed:
        sweep.update_manifest(manifest, changed)


def feed(sweep: Sweep) -> tuple[dict[str, str], int]:
    """Send the sweep's waiting runs that fit now; (run key -> job id of those sent, runs still
    waiting). A refusal by Slurm (the limit reached by other jobs meanwhile) leaves them waiting."""
    with sweep.locked():
        manifest = sweep.read_manifest()
        waiting = waiting_runs(manifest)
        if not waiting:
            return {}, 0
        resources = parse_grid(sweep.grid_path.read_text(), sweep.grid_path).resources
        try:
            sent = send(sweep, manifest, get_executor("slurm"), [], resources, {})
        except PartialSubmission as exc:
            sent = exc.submitted
        return sent, len(waiting) - len(sent)


def feed_if_stuck(sweep: Sweep, manifest: dict[str, Any], current: dict[str, str]) -> str | None:
    """Feed a sweep whose runs wait while none of its jobs is queued or running (nothing would
    feed them otherwise); a line for the user about it, or None where there was nothing to do."""
    waiting = [k for k, s in current.items() if s == states.QUEUED_LOCALLY]
    if not waiting or any(states.is_active(s) and s != states.QUEUED_LOCALLY for s in current.values()):
        return None
    tried = sweep.path / "slurm" / "fed-when-stuck"
    try:  # a status --watch looks every 2 s: Slurm is asked for room once per poll interval at most
        if time.time() - tried.stat().st_mtime < poll_interval_s():
            return f"{len(waiting)} runs wait for room on the cluster, and none of the sweep's jobs is left to send them"
    except FileNotFoundError:
        pass
    try:
        tried.parent.mkdir(parents=True, exist_ok=True)
        tried.touch()
    except OSError:
        pass
    try:
        sent, left = feed(sweep)
    except PtbjobsError as exc:
        return f"{len(waiting)} runs wait for room on the cluster, and none of the sweep's jobs is left to send them: {exc.message}"
    return f"{len(waiting)} runs waited with none of the sweep's jobs left to send them: sent {len(sent)}, {left} still wait"


def submit_and_record(sweep: Sweep, manifest: dict[str, Any], executor: Executor, keys: list[str],
                      resources: Resources, job_tries: dict[str, int]) -> dict[str, str]:
    """Submit and write every job id into the manifest, batch by batch as the scheduler accepts
    them (also those of a submission that failed part-way: they will run, and must be known to
    status, cancel and retry). Ctrl-C or TERM is held until the ids are written, and the executor
    stops sending at the next batch on such a stop; a kill -9, which cannot be held, leaves at most
    one batch marked as being sent, settled by the next send (`settle_sending`)."""
    with interrupts_held():
        return executor.submit(sweep, keys, resources, ManifestLedger(sweep, manifest, executor.name, job_tries))


def settle_sending(sweep: Sweep, manifest: dict[str, Any], executor: Executor, resources: Resources,
                   job_tries: dict[str, int]) -> dict[str, str]:
    """Batches a killed submit marked as being sent and never recorded: their jobs, found by the
    executor under the batch's token, are recorded (they were sent: sending them again would run
    them twice); a batch the scheduler never got is forgotten. Returns run key -> job id of the
    runs found sent. Raises where the scheduler cannot tell."""
    marks = manifest.get("sending") or {}
    found: dict[str, str] = {}
    for token, mark in marks.items():
        runner = executor if mark["executor"] == executor.name else get_executor(mark["executor"])
        # every run of the batch, in its order (a task's index is its place there), kept only where
        # the manifest still has the run
        sent = {k: j for k, j in runner.find_sent(sweep, token, mark["runs"], mark["per_job"], mark["time"]).items()
                if k in manifest["runs"]}
        record_jobs(manifest, mark["executor"], sent, job_tries)
        found.update(sent)
    if marks:
        for key in found:  # sent, so no longer waiting
            manifest["runs"][key].pop("waiting", None)
        sweep.update_manifest(manifest, found, sending={})
    return found
