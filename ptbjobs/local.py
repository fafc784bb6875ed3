"""The local executor: the embedded default when there is no cluster.

Jobs run as background processes that outlive the CLI. One supervisor process per sweep starts
queued jobs in order, at most `max_parallel` at once (one per GPU where there are GPUs); each job
is a worker process of its own (its own session, so neither the CLI's end nor the supervisor's
touches it). Every fact lives in files, each with one writer, so any later process can read it:

    <sweep>/local/
      settings.json          max_parallel in force, and the one last given by --max-parallel
      supervisor.lock        flock'ed by the live supervisor
      jobs/<id>.json         written by submit (PENDING), then by the supervisor (RUNNING, pid, slot)
      jobs/<id>.end.json     written once when the job ends (state, exit code): by the worker, or
                             by the supervisor when it had to kill a cancelled job
      jobs/<id>.cancel       written once by the first `ptbjobs cancel` of the job: when, and how
                             long the job may take to stop

A RUNNING job whose process is gone without an end file was killed or crashed: it reads FAILED.
A cancelled job that is still running when its wait is over (PTBJOBS_KILL_WAIT_S of the cancel
command, 120 s by default) is killed by the supervisor, as Slurm does after its KillWait: a run
saves and stops within seconds of a SIGTERM unless its process is stuck (a hung read of a network
filesystem, a stopped process).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from ptbjobs import states
from ptbjobs.atomic import atomic_write_json, read_json_if_any, try_exclusive_lock
from ptbjobs.errors import ConfigError
from ptbjobs.grid import Resources
from ptbjobs.sweep import Sweep

POLL_S = 0.5
IDLE_EXIT_S = 5.0  # the supervisor leaves once nothing has been queued or running for this long
# A run acts on SIGTERM at its next training step, so an evaluation under way finishes first: well
# under a minute for this model on 2 CPU threads.
DEFAULT_KILL_WAIT_S = 120.0


class LocalExecutor:
    name = "local"

    def __init__(self, max_parallel: int | None = None):
        self.max_parallel = max_parallel
        self.parallel_in_force: int | None = None  # set by submit, for the CLI to show

    def submit(self, sweep: Sweep, keys: list[str], resources: Resources) -> dict[str, str]:
        """Queue one job per run key; returns key -> job id. Call with the sweep lock held.
        A sweep keeps the last --max-parallel given to it: a later submit or retry without the
        flag (resuming a timed-out run, adding runs) must not fall back to the default."""
        folder = _folder(sweep)
        (folder / "jobs").mkdir(parents=True, exist_ok=True)
        given = self.max_parallel or (read_json_if_any(folder / "settings.json") or {}).get("max_parallel_given")
        self._write_settings(folder, given, given or default_parallelism(resources), resources.to_dict())
        number = _last_job_number(folder)
        ids = {}
        for key in keys:
            number += 1
            job_id = f"L{number}"
            atomic_write_json(_job_path(folder, job_id), {"job_id": job_id, "number": number, "run": key,
                                                   "state": states.PENDING, "submitted": time.time()})
            ids[key] = job_id
        ensure_supervisor(sweep)
        return ids

    def apply_max_parallel(self, sweep: Sweep) -> None:
        """Give the sweep the --max-parallel of a submit or retry that started nothing, so that the
        flag is never ignored: the supervisor reads it at its next look, starting queued jobs in the
        new slots, or letting running ones finish before the next starts. Call with the sweep lock
        held."""
        if self.max_parallel is None:
            return
        folder = _folder(sweep)
        settings = read_json_if_any(folder / "settings.json")
        if settings is None:
            raise ConfigError(None, f"--max-parallel: the sweep {sweep.path} has no runs on the local executor",
                              "on Slurm, set array_parallelism in the grid's [resources]")
        self._write_settings(folder, self.max_parallel, self.max_parallel, settings["resources"])

    def _write_settings(self, folder: Path, given: int | None, parallel: int, resources: dict[str, Any]) -> None:
        atomic_write_json(folder / "settings.json", {"max_parallel": parallel, "max_parallel_given": given,
                                                     "resources": resources})
        self.parallel_in_force = parallel

    def query(self, sweep: Sweep, job_ids: list[str]) -> dict[str, str]:
        folder = _folder(sweep)
        return {job_id: job_state(folder, job_id) for job_id in job_ids}

    def cancel(self, sweep: Sweep, job_ids: list[str]) -> None:
        folder = _folder(sweep)
        wait = kill_wait_s()  # a bad value stops the command before anything is cancelled
        for job_id in job_ids:
            state = job_state(folder, job_id)
            if not states.is_active(state):
                continue
            marker = folder / "jobs" / f"{job_id}.cancel"
            if not marker.exists():  # a second cancel neither restarts nor changes the wait
                atomic_write_json(marker, {"asked": time.time(), "kill_wait_s": wait})
            record = read_json_if_any(_job_path(folder, job_id)) or {}
            if state == states.RUNNING and _alive(record):
                os.kill(record["pid"], signal.SIGTERM)  # the trainer saves its state and stops
            elif state == states.PENDING:
                _write_end(folder, job_id, states.CANCELLED, None, "cancelled before it started")

    def log_paths(self, sweep: Sweep, key: str, job_ids: list[str]) -> list[Path]:
        return [sweep.run_dir(key) / "logs" / f"{job_id}.log" for job_id in job_ids]


def kill_wait_s() -> float:
    """How long a cancelled job may take to stop before it is killed: $PTBJOBS_KILL_WAIT_S, else 120 s."""
    given = os.environ.get("PTBJOBS_KILL_WAIT_S")
    if given is None:
        return DEFAULT_KILL_WAIT_S
    try:
        seconds = float(given)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ConfigError(None, f"PTBJOBS_KILL_WAIT_S: must be a number of seconds >= 0, got {given!r}",
                          "unset it for the default of 120 s")
    return seconds


def parallel_in_force(sweep: Sweep) -> int | None:
    """The sweep's current limit on runs at once, or None if nothing was ever submitted locally."""
    return (read_json_if_any(_folder(sweep) / "settings.json") or {}).get("max_parallel")


def default_parallelism(resources: Resources) -> int:
    """`runs_per_gpu` runs per visible GPU; else as many runs as there are cores for them (2 each
    by default)."""
    gpus = visible_gpus()
    if gpus:
        return len(gpus) * resources.runs_per_gpu
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

def job_state(folder: Path, job_id: str) -> str:
    end = read_json_if_any(folder / "jobs" / f"{job_id}.end.json")
    if end:
        return end["state"]
    record = read_json_if_any(_job_path(folder, job_id))
    if record is None:
        return states.UNKNOWN
    if record["state"] == states.RUNNING and not _alive(record):
        end = read_json_if_any(folder / "jobs" / f"{job_id}.end.json")  # it may have ended just now
        if end:
            return end["state"]
        if (folder / "jobs" / f"{job_id}.cancel").exists():
            return states.CANCELLED  # killed by the cancel before it could save and say so
        return states.FAILED  # killed or crashed before it could say so
    return record["state"]


def _alive(record: dict[str, Any]) -> bool:
    """Is the job's process still the one we started? (A pid alone can be reused.)"""
    pid = record.get("pid")
    if not pid:
        return False
    start = _process_start(pid)
    return start is not None and start == record.get("pid_start")


def _process_start(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has ended
        return None
    return int(fields[19])  # starttime, in clock ticks since boot


# ---- the supervisor ----

def ensure_supervisor(sweep: Sweep) -> None:
    """Start the sweep's supervisor unless one is running (it holds supervisor.lock)."""
    folder = _folder(sweep)
    with open(folder / "supervisor.lock", "a") as handle:
        if not try_exclusive_lock(handle):
            return  # a live supervisor will see the new jobs
        fcntl.flock(handle, fcntl.LOCK_UN)
    with open(folder / "supervisor.log", "a") as log:
        subprocess.Popen([sys.executable, "-m", "ptbjobs.local", "supervise", str(sweep.path)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


def supervise(sweep: Sweep) -> None:
    folder = _folder(sweep)
    with open(folder / "supervisor.lock", "a") as lock:
        if not try_exclusive_lock(lock):
            return  # another supervisor got there first
        idle_since = time.monotonic()
        while True:
            records = _records(folder)
            running = [r for r in records if job_state(folder, r["job_id"]) == states.RUNNING]
            pending = sorted((r for r in records if job_state(folder, r["job_id"]) == states.PENDING),
                             key=lambda r: r["number"])
            for record in pending:
                if not _launch(sweep, folder, record):
                    break  # no free slot
            for record in running:
                _kill_if_cancel_ignored(sweep, folder, record)
            if running or pending:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > IDLE_EXIT_S:
                # leave only under the sweep lock, after a last look: a submit (which holds that lock
                # while it queues jobs and checks for a supervisor) then either came before and is
                # seen here, or comes after and finds no supervisor and starts one
                with sweep.locked():
                    if not any(job_state(folder, r["job_id"]) == states.PENDING for r in _records(folder)):
                        return
            time.sleep(POLL_S)


def _kill_if_cancel_ignored(sweep: Sweep, folder: Path, record: dict[str, Any]) -> None:
    """SIGKILL a running job (its whole process group) that has not stopped within the wait its
    cancel gave it. Its run keeps its last checkpoint, and `retry` resumes from it."""
    job_id = record["job_id"]
    marker = folder / "jobs" / f"{job_id}.cancel"
    cancel = read_json_if_any(marker)
    if cancel is None:  # none, or an empty marker from an older ptbjobs: its mtime says when
        try:
            cancel = {"asked": marker.stat().st_mtime, "kill_wait_s": DEFAULT_KILL_WAIT_S}
        except FileNotFoundError:
            return
    if time.time() - cancel["asked"] < cancel["kill_wait_s"] or not _alive(record):
        return
    try:
        os.killpg(record["pid"], signal.SIGKILL)  # a worker leads its own session (start_new_session)
    except ProcessLookupError:
        return  # it ended just now
    for _ in range(100):  # SIGKILL takes effect at once, except on a process in uninterruptible sleep
        if not _alive(record):
            break
        time.sleep(0.05)
    else:
        return  # still there: it reads RUNNING, and the next look kills it again
    if read_json_if_any(folder / "jobs" / f"{job_id}.end.json") is None:
        message = f"killed: still running {cancel['kill_wait_s']:g} s after the cancel"
        with open(sweep.run_dir(record["run"]) / "logs" / f"{job_id}.log", "a") as log:  # for `ptbjobs logs`
            log.write(f"ptbjobs job {job_id}: {message}\n")
        _write_end(folder, job_id, states.CANCELLED, -signal.SIGKILL, message)


def _records(folder: Path) -> list[dict[str, Any]]:
    paths = [p for p in (folder / "jobs").glob("L*.json") if p.stem[1:].isdigit()]
    return [r for r in map(read_json_if_any, paths) if r and "number" in r]


def _launch(sweep: Sweep, folder: Path, record: dict[str, Any]) -> bool:
    """Start a queued job in a free slot; False if there is none. Under the sweep lock from the
    look at the limit and the job to the RUNNING record, so that `cancel` (which holds it too) sees
    either a PENDING job it can cancel in place or a RUNNING one it signals, and a new limit
    (apply_max_parallel, which holds it too) holds for every start after it is written."""
    with sweep.locked():
        settings = read_json_if_any(folder / "settings.json") or {}
        limit = settings.get("max_parallel", 1)
        running = [r for r in _records(folder) if job_state(folder, r["job_id"]) == states.RUNNING]
        # after a narrower limit, running jobs may hold slots at or above it: a slot counts as
        # taken modulo the limit, so that slot % GPUs does not put two runs on one GPU, another idle
        taken = {r.get("slot", 0) % limit for r in running}
        free = [slot for slot in range(limit) if slot not in taken]
        if len(running) >= limit or not free:
            return False
        if (folder / "jobs" / f"{record['job_id']}.cancel").exists() or job_state(folder, record["job_id"]) != states.PENDING:
            return True
        _start_worker(sweep, folder, record, free[0], settings)
        return True


def _start_worker(sweep: Sweep, folder: Path, record: dict[str, Any], slot: int, settings: dict[str, Any]) -> None:
    job_id = record["job_id"]
    run_dir = sweep.run_dir(record["run"])
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    gpus = visible_gpus()
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    threads = settings.get("resources", {}).get("cpus_per_task") or max(1, (os.cpu_count() or 1) // settings.get("max_parallel", 1))
    env["OMP_NUM_THREADS"] = str(threads)
    with open(run_dir / "logs" / f"{job_id}.log", "a") as log:
        process = subprocess.Popen([sys.executable, "-m", "ptbjobs.local", "work", str(sweep.path), job_id],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    start = None
    for _ in range(100):  # /proc/<pid>/stat appears as soon as the process exists
        start = _process_start(process.pid)
        if start is not None:
            break
        time.sleep(0.01)
    atomic_write_json(_job_path(folder, job_id), {**record, "state": states.RUNNING, "pid": process.pid,
                                           "pid_start": start, "slot": slot, "started": time.time()})


# ---- the worker ----

def work(sweep: Sweep, job_id: str) -> int:
    """Run one job in this process; record how it ended. Returns the exit code.

    The grid's time limit (`timeout_min`) is kept as on Slurm: when it is reached the trainer saves
    its state and the job resumes from it at once, in the same slot, up to `max_requeues` times;
    after the last one the job ends TIMEOUT and `ptbjobs retry` resumes it."""
    from ptbjobs.job import defer_stop_signals

    defer_stop_signals()  # before torch is imported: a time limit or a cancel may come while it loads
    from ptbjobs.errors import DivergedError
    from ptbjobs.job import run_job
    from ptbjobs.train import TrainingInterrupted

    folder = _folder(sweep)
    record = read_json_if_any(_job_path(folder, job_id))
    settings = read_json_if_any(folder / "settings.json") or {}
    print(f"ptbjobs job {job_id}: run {record['run']} on {os.uname().nodename}, pid {os.getpid()}", flush=True)
    cancel_marker = folder / "jobs" / f"{job_id}.cancel"
    resources = settings.get("resources", {})
    timeout_min = resources.get("timeout_min") or 0
    max_requeues = resources.get("max_requeues") or 0
    requeues = 0
    while True:
        limit = _TimeLimit(timeout_min) if timeout_min else None
        try:
            run_job(sweep.run_dir(record["run"]))
        except TrainingInterrupted as exc:
            timed_out = limit is not None and limit.reached.is_set() and not cancel_marker.exists()
            if timed_out and requeues < max_requeues:
                requeues += 1
                print(f"ptbjobs job {job_id}: time limit of {timeout_min} min reached ({exc.message}); "
                      f"requeued in place ({requeues} of {max_requeues})", flush=True)
                continue
            state = states.CANCELLED if cancel_marker.exists() else states.TIMEOUT if timed_out else states.PREEMPTED
            # the log's last line says why training stopped, as Slurm's own line does for its jobs; it
            # comes before the end record, so whoever sees the job ended finds it in the log
            print(f"ptbjobs job {job_id}: {state} ({exc.message}); `ptbjobs retry` resumes it", flush=True)
            _write_end(folder, job_id, state, exc.exit_code, exc.message)
            return exc.exit_code
        except DivergedError as exc:
            _write_end(folder, job_id, states.FAILED, exc.exit_code, exc.message)
            print(f"ptbjobs: {exc}", flush=True)
            return exc.exit_code
        except BaseException as exc:  # noqa: BLE001 - every failure must be recorded, then shown in the log
            traceback.print_exc()
            _write_end(folder, job_id, states.FAILED, 1, f"{type(exc).__name__}: {exc}")
            return 1
        finally:
            if limit is not None:
                limit.stop()
        _write_end(folder, job_id, states.COMPLETED, 0, "")
        return 0


class _TimeLimit:
    """After `minutes`, asks this process's trainer to save and stop, as Slurm does before its
    limit: one SIGUSR2 (remembered if it comes before training, which then stops before a step)."""

    def __init__(self, minutes: float):
        self.reached = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(60 * minutes,), daemon=True)
        self._thread.start()

    def _watch(self, seconds: float) -> None:
        if not self._stopped.wait(seconds):
            self.reached.set()
            os.kill(os.getpid(), signal.SIGUSR2)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


# ---- files ----

def _folder(sweep: Sweep) -> Path:
    return sweep.path / "local"


def _job_path(folder: Path, job_id: str) -> Path:
    return folder / "jobs" / f"{job_id}.json"


def _last_job_number(folder: Path) -> int:
    numbers = [int(p.stem[1:]) for p in (folder / "jobs").glob("L*.json") if p.stem[1:].isdigit()]
    return max(numbers, default=0)


def _write_end(folder: Path, job_id: str, state: str, exit_code: int | None, message: str) -> None:
    atomic_write_json(folder / "jobs" / f"{job_id}.end.json",
                {"state": state, "exit_code": exit_code, "message": message, "ended": time.time()})


if __name__ == "__main__":
    command, sweep_path = sys.argv[1], Path(sys.argv[2])
    if command == "supervise":
        supervise(Sweep(sweep_path))
    elif command == "work":
        sys.exit(work(Sweep(sweep_path), sys.argv[3]))
