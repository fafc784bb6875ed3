"""What every scheduled job runs: the training described by a run folder's spec.json.

`submit` writes spec.json into each run folder; the job (a local worker process, or a Slurm job
through submitit) needs only the folder's path, and running it twice is harmless: a finished run is
left alone and an unfinished one resumes from its checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ptbjobs.atomic import atomic_write_bytes
from ptbjobs.config import TrainConfig

SPEC_FILE = "spec.json"


def write_spec(run_dir: Path, config: TrainConfig, data_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"train": config.to_dict(), "data_dir": str(data_dir)}
    atomic_write_bytes(run_dir / SPEC_FILE, (json.dumps(spec, indent=2) + "\n").encode())


def read_spec(run_dir: Path) -> tuple[TrainConfig, Path]:
    spec = json.loads((run_dir / SPEC_FILE).read_text())
    return TrainConfig.from_mapping(spec["train"], source=str(run_dir / SPEC_FILE)), Path(spec["data_dir"])


def run_job(run_dir: Path) -> dict[str, Any]:
    """Train the run in `run_dir` to the end, logging plain lines to stderr and keeping
    progress.json (the run's heartbeat) fresh for `ptbjobs status`."""
    from ptbjobs.progress import PlainReporter, ProgressFileReporter  # torch: only where a run trains
    from ptbjobs.runner import run_training

    config, data_dir = read_spec(run_dir)
    reporter = ProgressFileReporter(run_dir, PlainReporter())
    return run_training(config, run_dir, data_dir, reporter=reporter)


STOPPED = 75  # EX_TEMPFAIL, as TrainingInterrupted: the run's state on disk is current, resume it
# How a run's process may end with its state on disk current: stopped by a signal (75: saved at a
# step, or before training began), or killed by USR2/TERM before any handler was in place
RESUMABLE_EXIT_CODES = frozenset({STOPPED, -12, -15})  # -SIGUSR2, -SIGTERM (Linux numbers)

# USR2/TERM received before training began, in order; the runner stops on them (ptbjobs.runner)
pending_stop_signals: list[int] = []


def defer_stop_signals() -> None:
    """For a process that runs one job, first thing: USR2 or TERM before training has begun
    (torch loading, the data being read) is remembered, and the runner stops on it at its next
    look, before training a step: the job ends as if stopped in training (exit 75), and the run
    resumes from its last checkpoint. One after training has ended changes nothing: the run's
    state on disk is final by then.

    Raising SystemExit from the handler instead is not reliable: code that catches every exception
    (as some does while torch is imported) swallows it, and the run trains on as if never told."""
    import signal

    def remember(signum: int, frame: Any) -> None:
        pending_stop_signals.append(signum)

    for sig in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, remember)


def main(argv: list[str]) -> int:
    """`python -m ptbjobs.job RUN_DIR`: one run of a packed job, as its own process. Exit codes as
    `ptbjobs train`: 0 done, 75 stopped with its state saved, 3 diverged, 2 bad input, else failed."""
    import os
    import socket
    import time

    from ptbjobs.errors import ConfigError, PtbjobsError

    if len(argv) != 1:
        print("usage: python -m ptbjobs.job RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] ptbjobs job: {run_dir} on {socket.gethostname()}, pid {os.getpid()}",
          flush=True)
    try:
        if not (run_dir / SPEC_FILE).is_file():
            raise ConfigError(None, f"{run_dir / SPEC_FILE} not found", "is RUN_DIR a run folder that ptbjobs submit wrote?")
        run_job(run_dir)
    except PtbjobsError as exc:
        print(f"ptbjobs: {'error: ' if exc.is_error else ''}{exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except ValueError as exc:  # a damaged spec.json
        print(f"ptbjobs: error: {run_dir / SPEC_FILE}: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    # through ptbjobs.job itself, not this __main__ copy of it: the runner reads that module's list
    from ptbjobs import job

    job.defer_stop_signals()  # first: a signal may come while torch is still being imported
    sys.exit(job.main(sys.argv[1:]))
