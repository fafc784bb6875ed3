"""Sweep operations: plan and submit a grid, retry, cancel. One executor query per command.

Submitting is idempotent: a run that completed is skipped, one queued or running is left alone,
one that failed, was cancelled or timed out is resumed from its checkpoint, and a run whose config
changed under the same key is refused unless forced (its old folder is then set aside, not deleted).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ptbjobs import states
from ptbjobs.config import saved_config
from ptbjobs.datafiles import SPLITS, missing_data_hint, resolve_data_dir, split_filename
from ptbjobs.errors import ConfigError, DataError, PtbjobsError
from ptbjobs.grid import Grid, Resources, RunSpec
from ptbjobs.job import RESUMABLE_EXIT_CODES, write_spec
from ptbjobs.rundir import RunDir
from ptbjobs.sweep import Sweep, latest_job

SUBMIT, RESUME, SKIP_COMPLETED, SKIP_ACTIVE, SKIP_DIVERGED, SKIP_UNKNOWN, RESTART = (
    "submit", "resume", "skip: completed", "skip: queued or running", "skip: diverged",
    "skip: state unknown", "restart (forced)")


class Executor(Protocol):
    name: str

    def submit(self, sweep: Sweep, keys: list[str], resources: Resources) -> dict[str, str]: ...
    def query(self, sweep: Sweep, job_ids: list[str]) -> dict[str, str]: ...
    def cancel(self, sweep: Sweep, job_ids: list[str]) -> None: ...
    def log_paths(self, sweep: Sweep, key: str, job_ids: list[str]) -> list[Path]: ...


def get_executor(name: str, max_parallel: int | None = None, submitting: bool = True,
                 sweep: Sweep | None = None) -> Executor:
    """"auto" is the executor of the sweep's last submission, if it has one (a sweep run locally
    stays local, as `retry` keeps each run's executor); else Slurm where sbatch is on PATH, else the
    local machine. With `submitting` False (asking about jobs, reading their logs), Slurm's
    executor is given even without sbatch."""
    from ptbjobs import slurm

    if name == "auto":
        kept = last_executor(sweep) if sweep is not None else None
        if kept == "slurm" and submitting and not slurm.have_slurm():
            raise PtbjobsError(f"--executor auto: the sweep {sweep.path} runs on Slurm, and sbatch is not on PATH",
                               "run on the cluster's login node, or give --executor local to run the rest here")
        name = kept or ("slurm" if slurm.have_slurm() else "local")
    if name == "local":
        from ptbjobs.local import LocalExecutor

        return LocalExecutor(max_parallel)
    if name == "slurm":
        if submitting and not slurm.have_slurm():
            raise PtbjobsError("--executor slurm: sbatch is not on PATH",
                               "run on a cluster's login node, or bring up a local cluster: sudo bash slurm/up.sh")
        if max_parallel is not None:
            raise ConfigError(None, "--max-parallel is for the local executor",
                              "on Slurm, set array_parallelism in the grid's [resources]")
        from ptbjobs.slurm_executor import SlurmExecutor  # imports submitit: only where it is used

        return SlurmExecutor()
    raise ConfigError(None, f"--executor: must be auto, local or slurm, got {name!r}")


def last_executor(sweep: Sweep) -> str | None:
    """The executor the sweep's most recent job went to, or None for a sweep with no jobs yet."""
    jobs = [job for entry in sweep.read_manifest()["runs"].values() for job in entry.get("jobs", [])]
    return max(jobs, key=lambda job: job["submitted"])["executor"] if jobs else None


@dataclass
class PlannedRun:
    spec: RunSpec
    state: str
    action: str


def run_states(sweep: Sweep, manifest: dict[str, Any], notes: list[str] | None = None,
               live: bool = False) -> dict[str, str]:
    """Each run's state: its latest job as its executor sees it, merged with its own folder.
    What an executor says of its answer (e.g. "Slurm did not answer: last known states") is
    appended to `notes`. With `live`, last-known states are refused: a command about to submit or
    cancel must not act on them (it could start a second copy of a run that is still going)."""
    by_executor: dict[str, list[str]] = {}
    for entry in manifest["runs"].values():
        job = latest_job(entry)
        if job:
            by_executor.setdefault(job["executor"], []).append(job["job_id"])
    job_states: dict[str, str] = {}
    for name, ids in by_executor.items():
        executor = get_executor(name, submitting=False)
        job_states.update(executor.query(sweep, ids))
        if live and getattr(executor, "stale", False):
            raise PtbjobsError(getattr(executor, "failure", None) or f"the {name} executor did not answer",
                               "nothing was submitted or cancelled; try again when Slurm answers (scontrol ping)")
        if notes is not None and getattr(executor, "note", None):
            notes.append(executor.note)
    result = {}
    for key, entry in manifest["runs"].items():
        job = latest_job(entry)
        folder = RunDir(sweep.run_dir(key)).read_state() or {}
        state = states.run_state(job_states.get(job["job_id"]) if job else None, folder.get("state"))
        if states.is_active(state) and _failed_in_pack(sweep, key, job["job_id"]):
            state = states.FAILED  # its pack-mates train on, holding the job: it will not
        result[key] = state
    return result


def _failed_in_pack(sweep: Sweep, key: str, job_id: str) -> bool:
    """A run packed with others (runs_per_gpu) records its exit code when its process ends."""
    try:
        code = int((sweep.run_dir(key) / "logs" / f"{job_id}.exit").read_text())
    except (OSError, ValueError):
        return False
    return code != 0 and code not in RESUMABLE_EXIT_CODES


def plan(grid: Grid, sweep: Sweep, force: bool = False) -> list[PlannedRun]:
    manifest = sweep.read_manifest()
    current = run_states(sweep, manifest, live=True)
    planned, conflicts = [], []
    for spec in grid.runs:
        entry = manifest["runs"].get(spec.key)
        state = current.get(spec.key, states.NOT_SUBMITTED)
        if entry and entry["config_hash"] != spec.config_hash():
            if not force:
                conflicts.append(_describe_change(spec, entry))
                continue
            if states.is_active(state):
                raise PtbjobsError(f"run {spec.key} changed config but is {state}",
                                   f"cancel it first: ptbjobs cancel --run {spec.key}")
            planned.append(PlannedRun(spec, state, RESTART))
            continue
        planned.append(PlannedRun(spec, state, _action(state)))
    if conflicts:
        raise ConfigError(None, f"{grid.path}: {len(conflicts)} run(s) already exist with another config: {conflicts[0]}"
                          + (f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""),
                          "rename the sweep, or add --force to set the old runs aside and start them afresh")
    return planned


def _action(state: str) -> str:
    if state == states.NOT_SUBMITTED:
        return SUBMIT
    if state == states.COMPLETED:
        return SKIP_COMPLETED
    if state == states.DIVERGED:
        return SKIP_DIVERGED
    if states.is_active(state):
        return SKIP_ACTIVE
    if state == states.UNKNOWN:
        return SKIP_UNKNOWN  # it may still be running: never start a second copy on a guess
    return RESUME


def _describe_change(spec: RunSpec, entry: dict[str, Any]) -> str:
    old, new = saved_config(entry["config"]), spec.config.to_dict()
    changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]
    return f"{spec.key} ({', '.join(changed[:3])})"


def check_data(grid: Grid, data_dir: Path | None) -> Path:
    """The data folder every job will read, checked now rather than in every job: --data-dir, else
    the grid's data_dir, else $PTBJOBS_DATA, else the per-user cache."""
    from_grid = data_dir is None and grid.data_dir is not None
    folder = resolve_data_dir(data_dir or grid.data_dir).resolve()
    for split in SPLITS:
        if not (folder / split_filename(split)).is_file():
            if from_grid:  # $PTBJOBS_DATA would not help here: the grid's key comes first
                raise DataError(f"{grid.path}: data_dir = {grid.data_dir!r}: missing data file {folder / split_filename(split)}",
                                "fix data_dir in the grid, or give --data-dir")
            raise DataError(f"missing data file {folder / split_filename(split)}", missing_data_hint(folder))
    return folder


def submit(grid: Grid, sweep: Sweep, executor: Executor, data_dir: Path | None = None, force: bool = False,
           dry_run: bool = False) -> list[PlannedRun]:
    """Plan the grid against the sweep and submit what needs it; returns the plan."""
    data = check_data(grid, data_dir)
    if dry_run:
        return plan(grid, sweep, force) if sweep.exists() else [PlannedRun(s, states.NOT_SUBMITTED, SUBMIT) for s in grid.runs]
    with sweep.locked():
        planned = plan(grid, sweep, force)
        manifest = sweep.read_manifest()
        manifest["name"] = grid.name
        to_start = [p for p in planned if p.action in (SUBMIT, RESUME, RESTART)]
        for item in to_start:
            run_dir = sweep.run_dir(item.spec.key)
            if item.action == RESTART and run_dir.exists():
                aside = sweep.path / "_superseded" / f"{item.spec.key}-{time.strftime('%Y%m%d-%H%M%S')}"
                aside.parent.mkdir(exist_ok=True)
                shutil.move(str(run_dir), aside)
            write_spec(run_dir, item.spec.config, data)
            entry = manifest["runs"].get(item.spec.key) if item.action != RESTART else None
            manifest["runs"][item.spec.key] = {
                "config": item.spec.config.to_dict(), "config_hash": item.spec.config_hash(),
                "point": {k: getattr(v, "value", v) for k, v in item.spec.point.items()},
                "jobs": entry["jobs"] if entry else [],
            }
        # the runs must be in the manifest before their jobs can start and be asked about
        sweep.write_manifest(manifest)
        sweep.write_grid_copy(grid.text)
        if to_start:
            _submit_and_record(sweep, manifest, executor, [p.spec.key for p in to_start], grid.resources)
        else:
            _apply_max_parallel(sweep, executor)
    return planned


def retry(sweep: Sweep, executor: Executor | None = None, keys: list[str] | None = None,
          max_parallel: int | None = None) -> dict[str, str]:
    """Resubmit the runs that ended without finishing (FAILED, TIMEOUT, CANCELLED, ...), each
    through the executor of its last job; they resume from their checkpoints. `max_parallel` is
    the local executor's new limit (without it the sweep keeps its own)."""
    from ptbjobs.grid import parse_grid

    with sweep.locked():
        manifest = sweep.read_manifest()
        current = run_states(sweep, manifest, live=True)
        chosen = [k for k, s in current.items() if s in states.RETRYABLE and (keys is None or k in keys)]
        if keys:
            unknown = [k for k in keys if k not in manifest["runs"]]
            if unknown:
                raise ConfigError(None, f"--run: no run {unknown[0]!r} in {sweep.path}", "see `ptbjobs status` for the keys")
        if not chosen:
            if max_parallel is not None:  # only a sweep that has run locally has a limit to change
                from ptbjobs.local import LocalExecutor

                LocalExecutor(max_parallel).apply_max_parallel(sweep)
            return {}
        resources = parse_grid(sweep.grid_path.read_text(), sweep.grid_path).resources
        by_executor: dict[str, list[str]] = {}
        for key in chosen:
            by_executor.setdefault(latest_job(manifest["runs"][key])["executor"], []).append(key)
        submitted: dict[str, str] = {}
        for name, run_keys in by_executor.items():
            runner = executor or get_executor(name, max_parallel)
            submitted.update(_submit_and_record(sweep, manifest, runner, run_keys, resources))
    return submitted


def _apply_max_parallel(sweep: Sweep, executor: Executor | None) -> None:
    """A local executor's --max-parallel changes the sweep's limit even when nothing is started."""
    from ptbjobs.local import LocalExecutor

    if isinstance(executor, LocalExecutor):
        executor.apply_max_parallel(sweep)


def _submit_and_record(sweep: Sweep, manifest: dict[str, Any], executor: Executor, keys: list[str],
                       resources: Resources) -> dict[str, str]:
    """Submit and write every job id into the manifest, also those of a submission that failed
    part-way (they were accepted and will run: they must be known to status, cancel and retry)."""
    try:
        ids = executor.submit(sweep, keys, resources)
    except PtbjobsError as exc:
        ids = getattr(exc, "submitted", {})
        if ids:
            _record_jobs(sweep, manifest, executor.name, ids)
        raise
    _record_jobs(sweep, manifest, executor.name, ids)
    return ids


def _record_jobs(sweep: Sweep, manifest: dict[str, Any], executor_name: str, ids: dict[str, str]) -> None:
    now = time.time()
    for key, job_id in ids.items():
        manifest["runs"][key]["jobs"].append({"job_id": job_id, "executor": executor_name, "submitted": now})
    sweep.write_manifest(manifest)


def cancel(sweep: Sweep, keys: list[str] | None = None) -> list[str]:
    """Cancel the queued or running jobs of the given runs (all runs if none given)."""
    with sweep.locked():
        manifest = sweep.read_manifest()
        if keys:
            unknown = [k for k in keys if k not in manifest["runs"]]
            if unknown:
                raise ConfigError(None, f"--run: no run {unknown[0]!r} in {sweep.path}", "see `ptbjobs status` for the keys")
        current = run_states(sweep, manifest, live=True)
        chosen = [k for k, s in current.items() if states.is_active(s) and (not keys or k in keys)]
        # a job may train several runs (runs_per_gpu): cancelling it stops all of them
        job_ids = {latest_job(manifest["runs"][k])["job_id"] for k in chosen}
        chosen = [k for k, s in current.items() if states.is_active(s) and latest_job(manifest["runs"][k])["job_id"] in job_ids]
        by_executor: dict[str, list[str]] = {}
        for key in chosen:
            job = latest_job(manifest["runs"][key])
            if job["job_id"] not in by_executor.get(job["executor"], []):
                by_executor.setdefault(job["executor"], []).append(job["job_id"])
        for name, ids in by_executor.items():
            get_executor(name, submitting=False).cancel(sweep, ids)
    return chosen
