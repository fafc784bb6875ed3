"""The local executor's two background processes (`python -m ptbjobs.executors.local_supervisor`):

    supervise SWEEP         one per sweep: starts queued jobs in order in free slots, and kills a
                            cancelled job that ignores its SIGTERM past its wait; leaves when idle
    work SWEEP JOB_ID       one per job: trains the job's run, keeping the grid's time limit, and
                            writes how the job ended

The files they share with the executor are described in local.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from ptbjobs.core import states
from ptbjobs.core.atomic import atomic_write_json, read_json_if_any, try_exclusive_lock
from ptbjobs.core.errors import DivergedError, PtbjobsError
from ptbjobs.executors.local import (
    DEFAULT_KILL_WAIT_S,
    SUPERVISOR_FILE,
    SUPERVISOR_HEARTBEAT_S,
    is_alive,
    job_files,
    job_path,
    job_runs,
    job_state,
    local_folder,
    this_host,
    visible_gpus,
    wait_for_start,
    write_end,
)
from ptbjobs.sweep.folder import Sweep
from ptbjobs.train.signals import TrainingInterrupted, defer_stop_signals

POLL_S = 0.5
IDLE_EXIT_S = 5.0  # the supervisor leaves once nothing has been queued or running for this long


def supervise(sweep: Sweep) -> None:
    folder = local_folder(sweep)
    with open(folder / "supervisor.lock", "a") as lock:
        if not try_exclusive_lock(lock):
            return  # another supervisor got there first
        queue = _Queue(folder)
        idle_since = last_beat = time.monotonic()
        while True:
            if not os.path.isdir(folder / "jobs"):
                return  # the sweep folder was deleted: nothing is left to run or to look after
            if time.monotonic() - last_beat > SUPERVISOR_HEARTBEAT_S:
                _beat(folder)  # for other hosts, which cannot look for this process
                last_beat = time.monotonic()
            running, pending = queue.look()
            for record in pending:
                if not _launch(sweep, folder, queue, record):
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
                    if not queue.look()[1]:
                        return
            time.sleep(POLL_S)


class _Queue:
    """The jobs the supervisor looks after: those queued or running. A job that has ended leaves
    for good, so each look reads the files of the jobs still in hand, not of every job the sweep
    ever had. Jobs are numbered in the order submit queued them, one after another: a new one is
    the file after the last seen."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.jobs: dict[str, dict[str, Any]] = {}  # job id -> its record, for jobs not ended
        self.last_number = 0
        # once: what was queued before this supervisor, from one listing (a job with an end record
        # is not even read: a sweep of 100,000 runs has few jobs in hand)
        names = set(os.listdir(folder / "jobs"))
        for name in names:
            job_id = name[:-len(".json")]
            if name.endswith(".json") and job_id[:1] == "L" and job_id[1:].isdigit():
                self.last_number = max(self.last_number, int(job_id[1:]))
                if f"{job_id}.end.json" not in names:
                    self._add(job_id)

    def _add(self, job_id: str) -> None:
        end, record = job_files(self.folder, job_id)
        if end is None and record and "number" in record:
            self.jobs[job_id] = record

    def look(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(running, queued in order: those queued `ahead` first) now; ended jobs leave the queue."""
        while job_path(self.folder, f"L{self.last_number + 1}").exists():
            self.last_number += 1
            self._add(f"L{self.last_number}")
        running, pending = [], []
        for job_id in list(self.jobs):
            if self.jobs[job_id]["state"] == states.PENDING and not (self.folder / "jobs" / f"{job_id}.end.json").exists():
                # a queued job changes only by this supervisor starting it, or by a cancel writing
                # its end record: a look at that file's name is enough (thousands may be queued)
                pending.append(self.jobs[job_id])
                continue
            end, record = job_files(self.folder, job_id)
            state = job_state(self.folder, job_id, end, record)
            if record:
                self.jobs[job_id] = record
            if state == states.RUNNING:
                running.append(self.jobs[job_id])
            elif state == states.PENDING:
                pending.append(self.jobs[job_id])
            elif not states.is_active(state):
                del self.jobs[job_id]
        return running, sorted(pending, key=lambda r: (not r.get("ahead"), r["number"]))


def _beat(folder: Path) -> None:
    try:
        os.utime(folder / SUPERVISOR_FILE)
    except OSError:
        pass  # not there (an older ptbjobs started this one): other hosts see no heartbeat


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
    if time.time() - cancel["asked"] < cancel["kill_wait_s"] or not is_alive(record):
        return
    try:
        os.killpg(record["pid"], signal.SIGKILL)  # a worker leads its own session (start_new_session)
    except ProcessLookupError:
        return  # it ended just now
    for _ in range(100):  # SIGKILL takes effect at once, except on a process in uninterruptible sleep
        if not is_alive(record):
            break
        time.sleep(0.05)
    else:
        return  # still there: it reads RUNNING, and the next look kills it again
    if read_json_if_any(folder / "jobs" / f"{job_id}.end.json") is None:
        message = f"killed: still running {cancel['kill_wait_s']:g} s after the cancel"
        for key in job_runs(record):
            with open(sweep.run_dir(key) / "logs" / f"{job_id}.log", "a") as log:  # for `ptbjobs logs`
                log.write(f"ptbjobs job {job_id}: {message}\n")
        write_end(folder, job_id, states.CANCELLED, -signal.SIGKILL, message)


def _launch(sweep: Sweep, folder: Path, queue: _Queue, record: dict[str, Any]) -> bool:
    """Start a queued job in a free slot; False if there is none. Under the sweep lock from the
    look at the limit and the job to the RUNNING record, so that `cancel` (which holds it too) sees
    either a PENDING job it can cancel in place or a RUNNING one it signals, and a new limit
    (apply_max_parallel, which holds it too) holds for every start after it is written."""
    with sweep.locked():
        settings = read_json_if_any(folder / "settings.json") or {}
        limit = settings.get("max_parallel", 1)
        running = queue.look()[0]
        # after a narrower limit, running jobs may hold slots at or above it: a slot counts as
        # taken modulo the limit, so that slot % GPUs does not put two runs on one GPU, another idle
        taken = {r.get("slot", 0) % limit for r in running}
        free = [slot for slot in range(limit) if slot not in taken]
        if len(running) >= limit or not free:
            return False
        if (folder / "jobs" / f"{record['job_id']}.cancel").exists() or job_state(folder, record["job_id"]) != states.PENDING:
            return True
        queue.jobs[record["job_id"]] = _start_worker(sweep, folder, record, free[0], settings)
        return True


def _start_worker(sweep: Sweep, folder: Path, record: dict[str, Any], slot: int, settings: dict[str, Any]) -> dict[str, Any]:
    job_id = record["job_id"]
    runs = job_runs(record)
    for key in runs:
        (sweep.run_dir(key) / "logs").mkdir(parents=True, exist_ok=True)
    # a fused pack's runs write their own logs: the process's own output is the job's
    log_path = sweep.run_dir(runs[0]) / "logs" / f"{job_id}.log" if len(runs) == 1 else folder / "jobs" / f"{job_id}.log"
    env = dict(os.environ)
    gpus = visible_gpus()
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    threads = settings.get("resources", {}).get("cpus_per_task") or max(1, (os.cpu_count() or 1) // settings.get("max_parallel", 1))
    env["OMP_NUM_THREADS"] = str(threads)
    with open(log_path, "a") as log:
        process = subprocess.Popen([sys.executable, "-m", "ptbjobs.executors.local_supervisor", "work", str(sweep.path), job_id],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    start = wait_for_start(process.pid)
    started = {**record, "state": states.RUNNING, "host": this_host(), "pid": process.pid, "pid_start": start,
               "slot": slot, "started": time.time()}
    atomic_write_json(job_path(folder, job_id), started)
    return started


# ---- the worker ----

def work(sweep: Sweep, job_id: str) -> int:
    """Run one job in this process; record how it ended. Returns the exit code.

    The grid's time limit (`timeout_min`) is kept as on Slurm: when it is reached the trainer saves
    its state and the job resumes from it at once, in the same slot, up to `max_requeues` times;
    after the last one the job ends TIMEOUT and `ptbjobs retry` resumes it."""
    defer_stop_signals()  # before torch is imported: a time limit or a cancel may come while it loads
    from ptbjobs.executors.job import cancel_requested, exit_code, run_fused, run_job

    folder = local_folder(sweep)
    record = read_json_if_any(job_path(folder, job_id))
    settings = read_json_if_any(folder / "settings.json") or {}
    runs = job_runs(record)
    print(f"ptbjobs job {job_id}: {'run' if len(runs) == 1 else 'fused runs'} {', '.join(runs)} on "
          f"{os.uname().nodename}, pid {os.getpid()}", flush=True)
    cancel_marker = folder / "jobs" / f"{job_id}.cancel"
    resources = settings.get("resources", {})
    timeout_min = resources.get("timeout_min") or 0
    max_requeues = resources.get("max_requeues") or 0
    requeues = 0
    while True:
        limit = _TimeLimit(timeout_min) if timeout_min else None
        try:
            if len(runs) == 1:
                run_job(sweep.run_dir(runs[0]))
            else:
                outcomes = run_fused([sweep.run_dir(key) for key in runs], job_id)
                failed = {Path(path).name: outcome for path, outcome in outcomes.items()
                          if isinstance(outcome, BaseException) and not cancel_requested(path, job_id)}
                if failed:  # each one's own line is in its log; the others finished
                    code = exit_code(next(iter(failed.values())))
                    message = f"runs not finished: {', '.join(failed)} (see their logs/{job_id}.log)"
                    print(f"ptbjobs job {job_id}: {message}", flush=True)
                    write_end(folder, job_id, states.FAILED, code, message, starts=requeues + 1)
                    return code
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
            write_end(folder, job_id, state, exc.exit_code, exc.message, starts=requeues + 1)
            return exc.exit_code
        except DivergedError as exc:
            write_end(folder, job_id, states.FAILED, exc.exit_code, exc.message, starts=requeues + 1)
            print(f"ptbjobs: {exc}", flush=True)
            return exc.exit_code
        except PtbjobsError as exc:  # one the user can act on (a full disk, changed data): its one line
            print(f"ptbjobs: error: {exc}", flush=True)
            write_end(folder, job_id, states.FAILED, exc.exit_code, exc.message, starts=requeues + 1)
            return exc.exit_code
        except BaseException as exc:  # noqa: BLE001 - every failure must be recorded, then shown in the log
            traceback.print_exc()
            write_end(folder, job_id, states.FAILED, 1, f"{type(exc).__name__}: {exc}", starts=requeues + 1)
            return 1
        finally:
            if limit is not None:
                limit.stop()
        write_end(folder, job_id, states.COMPLETED, 0, "", starts=requeues + 1)
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




if __name__ == "__main__":
    command, sweep_path = sys.argv[1], Path(sys.argv[2])
    if command == "supervise":
        supervise(Sweep(sweep_path))
    elif command == "work":
        sys.exit(work(Sweep(sweep_path), sys.argv[3]))
