"""`ptbjobs submit` and `ptbjobs retry`: plan a grid against its sweep and start what needs it.
One executor query per command.

Submitting is idempotent: a run that completed is skipped, one queued or running is left alone,
one that failed, was cancelled or timed out is resumed from its checkpoint, and a run whose config
changed under the same key is refused unless forced (its old folder is then set aside, not deleted).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptbjobs.core import states
from ptbjobs.core.atomic import flush_filesystem
from ptbjobs.core.errors import ConfigError, DataError, PtbjobsError
from ptbjobs.executors.base import Executor
from ptbjobs.executors.job import write_spec
from ptbjobs.launch.executor_choice import get_executor
from ptbjobs.launch.feed import send, waiting_runs
from ptbjobs.launch.run_states import run_states
from ptbjobs.sweep.folder import Sweep, latest_job, run_config, stored_config
from ptbjobs.sweep.grid import Grid, RunSpec, load_grid, parse_grid
from ptbjobs.sweep.search import group_of
from ptbjobs.sweep.select import select_runs
from ptbjobs.train.config import FIELD_DEFAULTS
from ptbjobs.train.ptb_files import SPLITS, missing_data_hint, resolve_data_dir, split_filename

SUBMIT, RESUME, SKIP_COMPLETED, SKIP_ACTIVE, SKIP_DIVERGED, SKIP_PRUNED, SKIP_UNKNOWN, RESTART = (
    "submit", "resume", "skip: completed", "skip: queued or running", "skip: diverged",
    "skip: paused by the search", "skip: state unknown", "restart (forced)")


STARTING = (SUBMIT, RESUME, RESTART)  # the actions that start a job


@dataclass
class PlannedRun:
    spec: RunSpec
    state: str  # before this submit
    action: str


@dataclass
class Submission:
    """What `submit_grid` did: the plan, and where it went."""

    sweep: Sweep
    executor: Executor
    planned: list[PlannedRun]
    grid_runs: int  # runs in the whole grid, before --only chose some

    waiting: int = 0  # runs that wait in the sweep for room on the cluster (QUEUED_LOCALLY)

    @property
    def starting(self) -> int:
        return sum(1 for p in self.planned if p.action in STARTING)


def submit_grid(grid_path: Path, sweep_dir: Path | None = None, executor: str = "auto",
                max_parallel: int | None = None, data_dir: Path | None = None, dry_run: bool = False,
                force: bool = False, allow_large: bool = False, only: list[str] | None = None) -> Submission:
    """`ptbjobs submit`: the grid file (cut to the runs of `only`, KEY=VALUE items) submitted to
    its sweep folder (runs/NAME unless given) through the executor named."""
    grid = load_grid(grid_path, allow_large=allow_large)
    grid_runs = len(grid.runs)
    if only:
        grid = select_runs(grid, only)
    sweep = Sweep(sweep_dir or Path("runs") / grid.name)
    if sweep.path.exists() and not sweep.path.is_dir():
        raise ConfigError(None, f"--sweep-dir {sweep.path} is a file, not a folder", "give a folder path")
    chosen = get_executor(executor, max_parallel, sweep=sweep)
    planned = submit(grid, sweep, chosen, data_dir=data_dir, force=force, dry_run=dry_run)
    waiting = 0 if dry_run else sum(1 for entry in sweep.read_manifest()["runs"].values() if entry.get("waiting"))
    return Submission(sweep, chosen, planned, grid_runs, waiting)


def plan(grid: Grid, sweep: Sweep, force: bool = False, job_tries: dict[str, int] | None = None) -> list[PlannedRun]:
    """What submitting the grid to the sweep would do to each run. `job_tries` gets how often the
    executors started each run's latest job (see run_states)."""
    manifest = sweep.read_manifest()
    current = run_states(sweep, manifest, live=True, job_tries=job_tries)
    planned, conflicts = [], []
    for spec in grid.runs:
        entry = manifest["runs"].get(spec.key)
        state = current.get(spec.key, states.NOT_SUBMITTED)
        if entry and entry["config_hash"] != spec.config_hash():
            if not force:
                conflicts.append(_describe_change(spec, manifest, entry))
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
    if state == states.PRUNED:  # it resumes when the search promotes it, not before
        return SKIP_PRUNED
    if states.is_active(state):
        return SKIP_ACTIVE
    if state in states.RETRYABLE:
        return RESUME  # the same states `retry` resumes: the two commands never disagree
    # UNKNOWN: it may still be running. REVOKED: a federation sibling cluster runs it. Or a word
    # of a newer Slurm: never start a second copy on a guess
    return SKIP_UNKNOWN


def search_entry(grid: Grid, spec: RunSpec, group_sizes: Counter) -> dict[str, Any] | None:
    """What the judge of the grid's search needs of a run, for its spec.json; None without rungs.
    `group_sizes`: the grid's runs in each group (of the whole grid, also under --only)."""
    search = grid.search
    if search is None or not search.rungs:
        return None
    group = group_of(spec.point, search.group_by)
    return {"rungs": list(search.rungs), "keep": search.keep, "metric": search.metric, "group": group,
            "group_size": group_sizes[group], "config": spec.config_hash()}


def _describe_change(spec: RunSpec, manifest: dict[str, Any], entry: dict[str, Any]) -> str:
    old, new = run_config(manifest, entry), spec.config.to_dict()
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
    new_folder = not sweep.path.exists()
    try:
        return _submit_locked(grid, sweep, executor, data, force)
    except PtbjobsError as exc:
        if new_folder and not getattr(exc, "submitted", None):
            # nothing went out: leave no sweep folder behind, or the next try finds one of runs never sent
            shutil.rmtree(sweep.path, ignore_errors=True)
        raise


def _submit_locked(grid: Grid, sweep: Sweep, executor: Executor, data: Path, force: bool) -> list[PlannedRun]:
    with sweep.locked():
        job_tries: dict[str, int] = {}
        planned = plan(grid, sweep, force, job_tries)
        manifest = sweep.read_manifest()
        to_start = [p for p in planned if p.action in STARTING]
        group_sizes = Counter(group_of(spec.point, grid.search.group_by) for spec in grid.whole_runs or grid.runs) \
            if grid.search else Counter()
        for item in to_start:
            run_dir = sweep.run_dir(item.spec.key)
            if item.action == RESTART and run_dir.exists():
                aside = sweep.path / "_superseded" / f"{item.spec.key}-{time.strftime('%Y%m%d-%H%M%S')}"
                aside.parent.mkdir(exist_ok=True)
                shutil.move(str(run_dir), aside)
            config = item.spec.config.to_dict()
            write_spec(run_dir, config, data, durable=False, search=search_entry(grid, item.spec, group_sizes))
            entry = manifest["runs"].get(item.spec.key) if item.action != RESTART else None
            manifest["runs"][item.spec.key] = {
                "config": stored_config(manifest, config), "config_hash": item.spec.config_hash(),
                "point": {k: getattr(v, "value", v) for k, v in item.spec.point.items()},
                "jobs": entry["jobs"] if entry else [],
            }
        if to_start:  # one flush for every spec.json, before the manifest names the runs or a job reads one
            flush_filesystem(sweep.path)
        # the runs must be in the manifest before their jobs can start and be asked about
        top = {"name": grid.name, "stall_after_min": grid.resources.stall_after_min}  # for status, which reads no grid
        if grid.search and grid.search.rungs:
            top["search"] = {"rungs": list(grid.search.rungs), "keep": grid.search.keep, "metric": grid.search.metric,
                             "group_by": list(grid.search.group_by)}
        top = {k: v for k, v in top.items() if manifest.get(k) != v}
        if "config_defaults" not in manifest:  # a manifest of version 1: its new entries are kept short too
            top["config_defaults"] = FIELD_DEFAULTS
        sweep.update_manifest(manifest, [p.spec.key for p in to_start], **top)
        sweep.write_grid_copy(grid.text)
        if to_start or waiting_runs(manifest):  # runs waiting for room go out first, as it allows
            send(sweep, manifest, executor, [p.spec.key for p in to_start], grid.resources, job_tries)
        if not to_start:
            executor.apply_max_parallel(sweep)  # a --max-parallel holds even when nothing starts
    return planned


@dataclass
class Retried:
    submitted: dict[str, str]  # run key -> its new job id
    # the local executor's limit on runs at once, where this retry set it or started local runs
    # (what the executor that did so says is in force)
    local_parallel: int | None = None
    # runs left alone though their job ended for accounting: the scheduler still holds the job
    # (requeued after a node failure, or still COMPLETING): run key -> the scheduler's state
    held: dict[str, str] = field(default_factory=dict)
    # runs that wait in the sweep for room on the cluster (QUEUED_LOCALLY), sent as earlier ones end
    waiting: list[str] = field(default_factory=list)


def retry(sweep: Sweep, executor: Executor | None = None, keys: list[str] | None = None,
          max_parallel: int | None = None) -> Retried:
    """Resubmit the runs that ended without finishing (FAILED, TIMEOUT, CANCELLED, ...), each
    through the executor of its last job; they resume from their checkpoints. `max_parallel` is
    the local executor's new limit (without it the sweep keeps its own)."""
    with sweep.locked():
        manifest = sweep.read_manifest()
        job_tries: dict[str, int] = {}
        held: dict[str, str] = {}
        current = run_states(sweep, manifest, live=True, job_tries=job_tries, held=held)
        held = {k: s for k, s in held.items() if keys is None or k in keys}
        chosen = [k for k, s in current.items() if s in states.RETRYABLE and (keys is None or k in keys)]
        if keys:
            unknown = [k for k in keys if k not in manifest["runs"]]
            if unknown:
                raise ConfigError(None, f"--run: no run {unknown[0]!r} in {sweep.path}", "see `ptbjobs status` for the keys")
        if not chosen:
            if max_parallel is None:
                return Retried({}, held=held)
            local = get_executor("local", max_parallel)  # only a sweep that has run locally has a limit to change
            local.apply_max_parallel(sweep)
            return Retried({}, local.parallel_in_force, held)
        resources = parse_grid(sweep.grid_path.read_text(), sweep.grid_path).resources
        by_executor: dict[str, list[str]] = {}
        for key in chosen:
            by_executor.setdefault(latest_job(manifest["runs"][key])["executor"], []).append(key)
        retried = Retried({}, held=held)
        for name, run_keys in by_executor.items():
            runner = executor or get_executor(name, max_parallel)
            retried.submitted.update(send(sweep, manifest, runner, run_keys, resources, job_tries))
            retried.waiting += [k for k in run_keys if manifest["runs"][k].get("waiting")]
            retried.local_parallel = retried.local_parallel or runner.parallel_in_force
    return retried
