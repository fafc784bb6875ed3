"""What one Slurm array task runs: a run folder (or, with `runs_per_gpu`, a pack of them), trained
to the end or to its next requeue.

Kept apart from the executor so that the pickled call names a small importable class. Nothing here
imports torch at module level: the training code loads it when the task starts training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from ptbjobs.core.errors import PtbjobsError
from ptbjobs.executors.job import cancel_requested, read_exit_code, run_job, write_exit_code
from ptbjobs.train.signals import CANCEL_CHECK_S, RESUMABLE_EXIT_CODES, TrainingInterrupted


class CheckpointableRun(submitit.helpers.Checkpointable):
    """What a Slurm task runs: one run folder, trained to the end or to the next requeue."""

    def __call__(self, run_dir: str) -> dict[str, Any]:
        _use_allocated_cpus()
        try:
            result = run_job(Path(run_dir))
        except TrainingInterrupted as exc:
            if signal.SIGUSR2 in exc.signals and signal.SIGTERM not in exc.signals:
                # (TERM as well means a cancel, or Slurm's own requeue on preemption: no requeue of ours.)
                # The runner caught USR2 and saved the state at a step boundary (the trainer's weights
                # are never half-updated in the checkpoint): now requeue. (It exits: the task keeps
                # its place in the queue, and frees no room for the sweep's waiting runs.)
                _requeue_through_submitit()
            feed_the_sweep(run_dir)
            raise
        except PtbjobsError as exc:
            # one the user can act on (a full disk, changed data): its one line in the log, not a
            # traceback through submitit; the task ends FAILED with the run's own exit code
            print(f"ptbjobs: error: {exc}", file=sys.stderr, flush=True)
            feed_the_sweep(run_dir)
            sys.exit(exc.exit_code)
        except Exception:
            feed_the_sweep(run_dir)
            raise
        feed_the_sweep(run_dir)
        return result

    # submitit's Checkpointable.checkpoint returns the same call with the same run folder: the
    # state lives in the folder's checkpoints, so nothing else needs pickling.


class ArrayTasks(submitit.helpers.Checkpointable):
    """The one pickled call of a whole job array: task i runs `calls[i]` (a callable and its
    arguments), i from SLURM_ARRAY_TASK_ID. Every task's pickle is a hard link to the same file,
    written once, so a 100,000-run submit writes 100 pickles, not 100,000. At its first requeue a
    task's pickle becomes its own call (`checkpoint`; submitit replaces the link, never writes
    through it)."""

    def __call__(self, calls: list[tuple[Any, tuple]]) -> Any:
        function, args = calls[_array_index(len(calls))]
        return function(*args)

    def checkpoint(self, calls: list[tuple[Any, tuple]]) -> submitit.helpers.DelayedSubmission:
        function, args = calls[_array_index(len(calls))]
        return function.checkpoint(*args)


def _array_index(tasks: int) -> int:
    index = os.environ.get("SLURM_ARRAY_TASK_ID", "")
    if not index.isdigit() or int(index) >= tasks:
        raise RuntimeError(f"SLURM_ARRAY_TASK_ID is {index!r}; this array has tasks 0 to {tasks - 1}")
    return int(index)


def _requeue_through_submitit() -> None:
    """Hand USR2 to submitit's own handler (the runner put it back when training stopped): it
    counts the time limit, pickles `checkpoint()`'s call, runs `scontrol requeue` and exits."""
    handler = signal.getsignal(signal.SIGUSR2)
    if callable(handler):
        handler(signal.SIGUSR2, None)


class PackedRuns(submitit.helpers.Checkpointable):
    """Several runs in one task (`runs_per_gpu`): one process per run, sharing the task's GPU and
    splitting its CPUs; with `fuse`, one process per group of runs of one shape, trained as one
    fused model (a run whose shape no other run of the pack has gets a process of its own). Each
    run keeps its own folder, checkpoints, log (logs/<job id>.log in the run folder) and exit code
    (logs/<job id>.exit). USR2 and TERM are passed on to every process; after USR2 (and no TERM)
    the task is requeued once all have saved, and on its next start the finished runs return at
    once."""

    def __init__(self, fuse: bool = False):
        self.fuse = fuse

    def __call__(self, run_dirs: list[str]) -> dict[str, int]:
        job_id = _slurm_job_id()
        cancelled = [d for d in run_dirs if cancel_requested(d, job_id)]  # cancelled alone before the task started
        for run_dir in cancelled:
            write_exit_code(run_dir, job_id, TrainingInterrupted.exit_code)
        starting = [d for d in run_dirs if d not in cancelled]
        groups = fused_groups(starting) if getattr(self, "fuse", False) else [[d] for d in starting]
        gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
        children: dict[tuple[str, ...], subprocess.Popen] = {}
        received: list[int] = []

        def pass_on(signum: int, frame: Any) -> None:
            received.append(signum)
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signum)

        # before the first child: a signal that comes while they start is passed on to those
        # started, and replayed to those started after it
        previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGUSR2, signal.SIGTERM)}
        try:
            for index, group in enumerate(groups):
                # the CPUs split by runs: a fused process does the work of all of its runs
                threads = max(1, _allocated_cpus() * len(group) // len(run_dirs))
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                if len(gpus) > 1:  # several GPUs in the task: the processes take turns, not all on the first
                    env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
                children[tuple(group)] = _start_child(group, job_id, env)
                for signum in received:
                    children[tuple(group)].send_signal(signum)
            codes = _wait_all(children, job_id)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print("ptbjobs: pack ended: " + ", ".join(f"{Path(d).name} exit {c}" for d, c in codes.items()), flush=True)
        stopped = [d for d, c in codes.items() if c in RESUMABLE_EXIT_CODES]
        if stopped and signal.SIGUSR2 in received and signal.SIGTERM not in received:
            _requeue_through_submitit()
        feed_the_sweep(run_dirs[0])
        codes.update({d: TrainingInterrupted.exit_code for d in cancelled})
        failed = [Path(d).name for d, c in codes.items() if c != 0 and not cancel_requested(d, job_id)]
        if failed:
            raise RuntimeError(f"runs not finished: {', '.join(failed)} (see their logs/{job_id}.log)")
        return codes


def fused_groups(run_dirs: list[str]) -> list[list[str]]:
    """The pack's runs by shape (train.config.fusion_key), in order of first appearance; a run
    whose spec.json cannot be read goes alone (its own process says what is wrong with it)."""
    from ptbjobs.executors.job import SPEC_FILE
    from ptbjobs.train.config import fusion_key

    groups: dict[Any, list[str]] = {}
    for run_dir in run_dirs:
        try:
            key = fusion_key(json.loads((Path(run_dir) / SPEC_FILE).read_text())["train"])
        except (OSError, ValueError, KeyError, TypeError):
            key = run_dir
        groups.setdefault(key, []).append(run_dir)
    return list(groups.values())


FEED_TIMEOUT_S = 300


def feed_the_sweep(run_dir: str) -> None:
    """The task is ending: the room it leaves goes to the sweep's runs waiting for it, if any
    (`ptbjobs feed`, launch/feed.py). A failure to feed is a line in the task's log, never the
    task's own failure: the next task to end, or any `submit`, sends them."""
    command = [sys.executable, "-m", "ptbjobs", "feed", "--sweep-dir", str(Path(run_dir).parent)]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, timeout=FEED_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"ptbjobs: could not send the sweep's waiting runs ({exc})", file=sys.stderr, flush=True)
        return
    if done.returncode != 0:
        print(f"ptbjobs: could not send the sweep's waiting runs (exit {done.returncode}); "
              "the next task to end, or `ptbjobs submit`, sends them", file=sys.stderr, flush=True)


def _start_child(run_dirs: list[str], job_id: str, env: dict[str, str]) -> subprocess.Popen:
    """One run's process, its output into the run's log; or a fused pack's, each run writing its
    own log, the process's own output (its start, a crash) into the task's log."""
    for run_dir in run_dirs:
        (Path(run_dir) / "logs").mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "ptbjobs.executors.job"]
    if len(run_dirs) > 1:
        return subprocess.Popen([*command, "--job-id", job_id, *run_dirs], env=env, stdin=subprocess.DEVNULL)
    with open(Path(run_dirs[0]) / "logs" / f"{job_id}.log", "a") as log:
        return subprocess.Popen([*command, run_dirs[0]], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)


def _wait_all(children: dict[tuple[str, ...], subprocess.Popen], job_id: str) -> dict[str, int]:
    """Wait for every process, writing each run's exit code as its process ends
    (`<run>/logs/<job id>.exit`): status shows a run that failed as FAILED while its pack-mates go
    on training. (A fused process writes each of its runs' own as the run ends: kept, where there.)"""
    codes: dict[str, int] = {}
    asked_to_stop: set[str] = set()
    next_cancel_check = time.monotonic() + CANCEL_CHECK_S
    while len(codes) < sum(map(len, children)):
        look_for_cancels = time.monotonic() >= next_cancel_check
        if look_for_cancels:
            next_cancel_check = time.monotonic() + CANCEL_CHECK_S
        for run_dirs, child in children.items():
            # one run cancelled alone (`ptbjobs cancel`): its process saves and stops, the others
            # train on (a fused process lets its run go itself)
            if look_for_cancels and len(run_dirs) == 1 and run_dirs[0] not in asked_to_stop \
                    and child.poll() is None and cancel_requested(run_dirs[0], job_id):
                child.send_signal(signal.SIGTERM)
                asked_to_stop.add(run_dirs[0])
            if run_dirs[0] not in codes and child.poll() is not None:
                for run_dir in run_dirs:
                    codes[run_dir] = read_exit_code(run_dir, job_id) if len(run_dirs) > 1 else None
                    if codes[run_dir] is None:
                        codes[run_dir] = child.returncode
                        write_exit_code(run_dir, job_id, child.returncode)
        time.sleep(0.5)
    return {run_dir: codes[run_dir] for run_dirs in children for run_dir in run_dirs}


def _slurm_job_id() -> str:
    """"123_4" for an array task, "125" for a job; "local" outside Slurm (tests)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "local")


def _allocated_cpus() -> int:
    """The CPUs Slurm gave the task: --cpus-per-task if asked for, else what the process may run on."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(cpus) if cpus.isdigit() and int(cpus) > 0 else len(os.sched_getaffinity(0))


def _use_allocated_cpus() -> None:
    """One torch thread per CPU Slurm gave the task, not one per CPU of the node."""
    import torch

    torch.set_num_threads(_allocated_cpus())
