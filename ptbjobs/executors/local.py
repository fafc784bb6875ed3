"""The local executor: the embedded default when there is no cluster.

Jobs run as background processes that outlive the CLI. One supervisor process per sweep starts
queued jobs in order, at most `max_parallel` at once (one per GPU where there are GPUs); each job
is a worker process of its own (its own session, so neither the CLI's end nor the supervisor's
touches it). Every fact lives in files, each with one writer, so any later process can read it:

    <sweep>/local/
      settings.json          max_parallel in force, and the one last given by --max-parallel
      supervisor.lock        flock'ed by the live supervisor
      supervisor.json        the supervisor last started (host, pid), so that one still starting counts as alive
      jobs/<id>.json         written by submit (PENDING), then by the supervisor (RUNNING, host, pid, slot)
      jobs/<id>.end.json     written once when the job ends (state, exit code): by the worker, or
                             by the supervisor when it had to kill a cancelled job
      jobs/<id>.cancel       written once by the first `ptbjobs cancel` of the job: when, and how
                             long the job may take to stop

A RUNNING job whose process is gone without an end file was killed or crashed: it reads FAILED.
A process can only be looked for on its own machine: a sweep folder on a filesystem shared by
several login nodes shows another host's running jobs as last recorded, and says so; cancel
refuses them (cancel from that host), retry leaves them alone, and nobody here starts a second
supervisor for a queue that one on another host serves.
A cancelled job that is still running when its wait is over (PTBJOBS_KILL_WAIT_S of the cancel
command, 120 s by default) is killed by the supervisor, as Slurm does after its KillWait: a run
saves and stops within seconds of a SIGTERM unless its process is stuck (a hung read of a network
filesystem, a stopped process).
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ptbjobs.core import states
from ptbjobs.core.atomic import atomic_write_json, read_json_if_any, try_exclusive_lock
from ptbjobs.core.env import seconds_from_env
from ptbjobs.core.errors import ConfigError, PtbjobsError
from ptbjobs.executors.base import Executor, JobStates, SendLedger
from ptbjobs.sweep.folder import Sweep
from ptbjobs.sweep.grid import Resources

# A run acts on SIGTERM at its next training step, so an evaluation under way finishes first: well
# under a minute for this model on 2 CPU threads.
DEFAULT_KILL_WAIT_S = 120.0
SUPERVISOR_FILE = "supervisor.json"  # the supervisor process last started: pid and its start time
# the supervisor touches its file this often: how another host, which cannot look for the process,
# tells a live supervisor (a fresh file) from one that died (three beats missed)
SUPERVISOR_HEARTBEAT_S = 30.0

log = logging.getLogger(__name__)


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, max_parallel: int | None = None):
        self.max_parallel = max_parallel  # --max-parallel of this command, if given

    def submit(self, sweep: Sweep, keys: list[str], resources: Resources,
               ledger: SendLedger | None = None, ahead: bool = False) -> dict[str, str]:
        """Queue one job per run key; returns key -> job id. Call with the sweep lock held.
        `ahead`: these start before the jobs already queued (a search's promoted runs).
        A sweep keeps the last --max-parallel given to it: a later submit or retry without the
        flag (resuming a timed-out run, adding runs) must not fall back to the default."""
        folder = local_folder(sweep)
        (folder / "jobs").mkdir(parents=True, exist_ok=True)
        given = self.max_parallel or (read_json_if_any(folder / "settings.json") or {}).get("max_parallel_given")
        self._write_settings(folder, given, given or default_parallelism(resources), resources.to_dict())
        number = _last_job_number(folder)
        token = secrets.token_hex(4)
        if ledger:
            ledger.sending(token, keys)
        ids = {}
        for pack in job_packs(keys, resources):
            number += 1
            job_id = f"L{number}"
            record = {"job_id": job_id, "number": number, "run": pack[0], "batch": token, "state": states.PENDING,
                      "submitted": time.time()}
            if len(pack) > 1:
                record["runs"] = pack
            if ahead:
                record["ahead"] = True
            atomic_write_json(job_path(folder, job_id), record)
            ids.update({key: job_id for key in pack})
        if ledger:
            ledger.sent(token, ids)
        ensure_supervisor(sweep)
        return ids

    def find_sent(self, sweep: Sweep, token: str, keys: list[str], per_job: int, since: float) -> dict[str, str]:
        """The job records of the batch. Asked only after a submit was killed: reading every
        job record here is no steady cost."""
        jobs = local_folder(sweep) / "jobs"
        found = {}
        for path in jobs.glob("L*.json") if jobs.is_dir() else []:
            if path.stem[1:].isdigit():
                record = read_json_if_any(path)
                if isinstance(record, dict) and record.get("batch") == token:
                    found.update({key: record["job_id"] for key in job_runs(record) if key in keys})
        return found

    def apply_max_parallel(self, sweep: Sweep) -> None:
        """Give the sweep the --max-parallel of a submit or retry that started nothing, so that the
        flag is never ignored: the supervisor reads it at its next look, starting queued jobs in the
        new slots, or letting running ones finish before the next starts. Call with the sweep lock
        held."""
        if self.max_parallel is None:
            return
        folder = local_folder(sweep)
        settings = read_json_if_any(folder / "settings.json")
        if settings is None:
            raise ConfigError(None, f"--max-parallel: the sweep {sweep.path} has no runs on the local executor",
                              "on Slurm, set array_parallelism in the grid's [resources]")
        self._write_settings(folder, self.max_parallel, self.max_parallel, settings["resources"])

    def _write_settings(self, folder: Path, given: int | None, parallel: int, resources: dict[str, Any]) -> None:
        atomic_write_json(folder / "settings.json", {"max_parallel": parallel, "max_parallel_given": given,
                                                     "resources": resources})
        self.parallel_in_force = parallel

    def query(self, sweep: Sweep, job_ids: list[str], max_age_s: float = 0.0) -> JobStates:
        """The jobs' states, from their files (always read anew: no scheduler to spare). Queued jobs need the sweep's supervisor: if it died
        (killed, say, or its machine rebooted), it is started again here, so that every command
        that looks at the sweep gets its queue moving again."""
        folder = local_folder(sweep)
        found, attempts, elsewhere = {}, {}, {}
        for job_id in job_ids:
            end, record = job_files(folder, job_id)
            found[job_id] = job_state(folder, job_id, end, record)
            if end and end.get("starts", 1) > 1:
                attempts[job_id] = end["starts"]
            host = other_host(record or {}) if found[job_id] == states.RUNNING else None
            if host:
                elsewhere.setdefault(host, []).append(job_id)
        queued = sum(1 for state in found.values() if state == states.PENDING)
        if queued and ensure_supervisor(sweep):
            log.warning("%s: the local executor's supervisor had stopped with %d run(s) queued; started it again",
                        sweep.path, queued)
        note = "; ".join(f"{', '.join(ids)} running on {host} (cannot check from here: shown as last recorded)"
                         for host, ids in elsewhere.items()) or None
        return JobStates(found, note=note, attempts=attempts)

    def cancel(self, sweep: Sweep, job_ids: list[str]) -> None:
        folder = local_folder(sweep)
        wait = kill_wait_s()  # a bad value stops the command before anything is cancelled
        for job_id in job_ids:  # checked first: nothing is cancelled unless all can be
            host = other_host(read_json_if_any(job_path(folder, job_id)) or {})
            if host and job_state(folder, job_id) == states.RUNNING:
                raise PtbjobsError(f"job {job_id} is running on {host}: its process cannot be stopped from {this_host()}",
                                   f"run `ptbjobs cancel` on {host}")
        for job_id in job_ids:
            state = job_state(folder, job_id)
            if not states.is_active(state):
                continue
            marker = folder / "jobs" / f"{job_id}.cancel"
            if not marker.exists():  # a second cancel neither restarts nor changes the wait
                atomic_write_json(marker, {"asked": time.time(), "kill_wait_s": wait})
            record = read_json_if_any(job_path(folder, job_id)) or {}
            if state == states.RUNNING and is_alive(record):
                os.kill(record["pid"], signal.SIGTERM)  # the trainer saves its state and stops
            elif state == states.PENDING:
                write_end(folder, job_id, states.CANCELLED, None, "cancelled before it started")

    def log_paths(self, sweep: Sweep, key: str, job_ids: list[str]) -> list[Path]:
        # per job: the run's own log, then, for a fused pack, its process's (how the pack ended, a crash)
        paths = []
        for job_id in job_ids:
            paths.append(sweep.run_dir(key) / "logs" / f"{job_id}.log")
            own = local_folder(sweep) / "jobs" / f"{job_id}.log"
            if own.exists():
                paths.append(own)
        return paths

    @staticmethod
    def split_attempts(log_text: str) -> list[str]:
        # the worker ends each attempt that a time limit stopped with "...; requeued in place (n of m)"
        parts, current = [], []
        for line in log_text.splitlines(keepends=True):
            current.append(line)
            if "; requeued in place (" in line:
                parts.append("".join(current))
                current = []
        return parts + ["".join(current)] if current or not parts else parts


def kill_wait_s() -> float:
    """How long a cancelled job may take to stop before it is killed: $PTBJOBS_KILL_WAIT_S, else 120 s."""
    return seconds_from_env("PTBJOBS_KILL_WAIT_S", DEFAULT_KILL_WAIT_S)


def job_packs(keys: list[str], resources: Resources) -> list[list[str]]:
    """The runs of each job: one each, or with `fuse`, packs of runs_per_gpu trained as one
    fused model (the runs in the order submit gave them: runs of one shape side by side)."""
    size = resources.runs_per_gpu if resources.fuse else 1
    return [keys[i:i + size] for i in range(0, len(keys), size)]


def job_runs(record: dict[str, Any]) -> list[str]:
    """The run keys of a job record: one, or a fused pack's."""
    return record.get("runs") or [record["run"]]


def default_parallelism(resources: Resources) -> int:
    """`runs_per_gpu` runs per visible GPU (one fused pack per GPU, with `fuse`); else as many jobs
    as there are cores for them (2 each by default)."""
    gpus = visible_gpus()
    if gpus:
        return len(gpus) * (1 if resources.fuse else resources.runs_per_gpu)
    per_run = resources.cpus_per_task or 2
    return max(1, (os.cpu_count() or 1) // per_run)


def visible_gpus() -> list[str]:
    """GPU indices a job may use, without importing torch (which would slow every command)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


# ---- job state, read back by any process ----

def job_files(folder: Path, job_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A job's end record, and (while it has none) its job record: each file read once. (Paths as
    strings: status reads these for every run still going, thousands in a large sweep.)"""
    end = read_json_if_any(f"{folder}/jobs/{job_id}.end.json")
    return end, None if end else read_json_if_any(f"{folder}/jobs/{job_id}.json")


def job_state(folder: Path, job_id: str, end: dict[str, Any] | None = None,
              record: dict[str, Any] | None = None) -> str:
    """The job's state from its files; `end` and `record` as job_files read them, if already read."""
    if end is None and record is None:
        end, record = job_files(folder, job_id)
    if end:
        return end["state"]
    if record is None:
        return states.UNKNOWN
    if record["state"] == states.RUNNING and not other_host(record) and not is_alive(record):
        end = read_json_if_any(folder / "jobs" / f"{job_id}.end.json")  # it may have ended just now
        if end:
            return end["state"]
        if (folder / "jobs" / f"{job_id}.cancel").exists():
            return states.CANCELLED  # killed by the cancel before it could save and say so
        return states.FAILED  # killed or crashed before it could say so
    return record["state"]


def this_host() -> str:
    return socket.gethostname()


def other_host(record: dict[str, Any]) -> str | None:
    """The host a job (or supervisor) record was written on, if not this one (records of older
    ptbjobs name none: taken as this host's)."""
    host = record.get("host")
    return host if host and host != this_host() else None


def is_alive(record: dict[str, Any]) -> bool:
    """Is the job's process still the one we started? (A pid alone can be reused.)"""
    pid = record.get("pid")
    if not pid:
        return False
    start = process_start(pid)
    return start is not None and start == record.get("pid_start")


def process_start(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has ended
        return None
    return int(fields[19])  # starttime, in clock ticks since boot


# ---- the supervisor process (local_supervisor.py) ----

def ensure_supervisor(sweep: Sweep) -> bool:
    """Start the sweep's supervisor unless one is running or starting; True if this started one."""
    folder = local_folder(sweep)
    if supervisor_alive(folder):
        return False  # it will see the new jobs (or, on another host, cannot be told apart from a live one)
    with open(folder / "supervisor.log", "a") as output:
        process = subprocess.Popen([sys.executable, "-m", "ptbjobs.executors.local_supervisor", "supervise",
                                    str(sweep.path)], stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                   start_new_session=True)
    atomic_write_json(folder / SUPERVISOR_FILE, {"host": this_host(), "pid": process.pid,
                                                 "pid_start": wait_for_start(process.pid), "started": time.time()})
    return True


def supervisor_alive(folder: Path) -> bool:
    """A supervisor holds supervisor.lock while it lives; one just started may not have taken it
    yet, and counts as alive while its process is (supervisor.json says which process that is)."""
    with open(folder / "supervisor.lock", "a") as handle:
        if not try_exclusive_lock(handle):
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    started = read_json_if_any(folder / SUPERVISOR_FILE)
    if not isinstance(started, dict):
        return False
    if other_host(started):  # flock does not reach across hosts on every shared filesystem
        try:
            return time.time() - (folder / SUPERVISOR_FILE).stat().st_mtime < 3 * SUPERVISOR_HEARTBEAT_S
        except OSError:
            return False
    return is_alive(started)


def wait_for_start(pid: int) -> int | None:
    """The start time of a process just created (its /proc entry appears at once, but be sure)."""
    for _ in range(100):
        start = process_start(pid)
        if start is not None:
            return start
        time.sleep(0.01)
    return None


# ---- files ----

def local_folder(sweep: Sweep) -> Path:
    return sweep.path / "local"


def job_path(folder: Path, job_id: str) -> Path:
    return folder / "jobs" / f"{job_id}.json"


def _last_job_number(folder: Path) -> int:
    numbers = [int(p.stem[1:]) for p in (folder / "jobs").glob("L*.json") if p.stem[1:].isdigit()]
    return max(numbers, default=0)


def write_end(folder: Path, job_id: str, state: str, exit_code: int | None, message: str, starts: int = 1) -> None:
    """`starts`: how many times the job's run was started (1 + its requeues in place)."""
    atomic_write_json(folder / "jobs" / f"{job_id}.end.json",
                      {"state": state, "exit_code": exit_code, "message": message, "ended": time.time(), "starts": starts})
