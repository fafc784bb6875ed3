"""`ptbjobs cancel`: stop queued or running jobs; a running run saves its state first."""

from __future__ import annotations

from ptbjobs.core import states
from ptbjobs.core.errors import ConfigError
from ptbjobs.executors.job import request_cancel
from ptbjobs.launch.executor_choice import get_executor
from ptbjobs.launch.run_states import run_states
from ptbjobs.sweep.folder import Sweep, latest_job


def cancel(sweep: Sweep, keys: list[str] | None = None) -> list[str]:
    """Cancel the queued or running jobs of the given runs (all runs if none given)."""
    with sweep.locked():
        manifest = sweep.read_manifest()
        if keys:
            unknown = [k for k in keys if k not in manifest["runs"]]
            if unknown:
                raise ConfigError(None, f"--run: no run {unknown[0]!r} in {sweep.path}", "see `ptbjobs status` for the keys")
        current = run_states(sweep, manifest, live=True)
        # runs waiting for room in the sweep have no job: they stop waiting (first, so that a task
        # ending under this cancel finds none of them to send)
        withdrawn = [k for k, s in current.items() if s == states.QUEUED_LOCALLY and (not keys or k in keys)]
        for key in withdrawn:
            manifest["runs"][key].pop("waiting")
            manifest["runs"][key].pop("promoted", None)
        if withdrawn:
            sweep.update_manifest(manifest, withdrawn)
        current = {k: s for k, s in current.items() if k not in withdrawn}
        chosen = [k for k, s in current.items() if states.is_active(s) and (not keys or k in keys)]
        # a job may train several runs (runs_per_gpu): it is cancelled where all of its runs still
        # going are; else the job is asked to let the chosen ones go, and the others train on
        active_runs: dict[str, list[str]] = {}  # job id -> its runs still going
        for key, state in current.items():
            if states.is_active(state):
                active_runs.setdefault(latest_job(manifest["runs"][key])["job_id"], []).append(key)
        by_executor: dict[str, dict[str, None]] = {}  # executor -> its job ids, in order, each once
        for key in chosen:
            job = latest_job(manifest["runs"][key])
            if all(k in chosen for k in active_runs[job["job_id"]]):
                by_executor.setdefault(job["executor"], {})[job["job_id"]] = None
            else:
                request_cancel(sweep.run_dir(key), job["job_id"])
        for name, ids in by_executor.items():
            get_executor(name, submitting=False).cancel(sweep, list(ids))
    return withdrawn + chosen
