"""What every job runs, on either executor: the training described by a run folder's spec.json.

`submit` writes spec.json into each run folder; the job (a local worker process, a Slurm array task,
or one run of a packed task as its own process: `python -m ptbjobs.executors.job RUN_DIR`) needs
only the folder's path, and running it twice is harmless: a finished run is left alone and an
unfinished one resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ptbjobs.core.atomic import atomic_write_bytes, replace_unsynced
from ptbjobs.train.config import TrainConfig
from ptbjobs.train.signals import defer_stop_signals

SPEC_FILE = "spec.json"


def write_spec(run_dir: Path, config: TrainConfig | dict[str, Any], data_dir: Path, durable: bool = True) -> None:
    """The run's spec.json. `durable=False` skips its fsyncs: the caller writing many flushes the
    filesystem once after the last (`flush_filesystem`), before any job can read them."""
    os.makedirs(run_dir, exist_ok=True)
    spec = {"train": config if isinstance(config, dict) else config.to_dict(), "data_dir": str(data_dir)}
    payload = (json.dumps(spec) + "\n").encode()  # one line: json's indenting encoder is 10 times slower
    (atomic_write_bytes if durable else replace_unsynced)(run_dir / SPEC_FILE, payload)


def read_spec(run_dir: Path) -> tuple[TrainConfig, Path]:
    spec = json.loads((run_dir / SPEC_FILE).read_text())
    return TrainConfig.from_mapping(spec["train"], source=str(run_dir / SPEC_FILE)), Path(spec["data_dir"])


def run_job(run_dir: Path) -> dict[str, Any]:
    """Train the run in `run_dir` to the end, logging plain lines to stderr and keeping
    progress.json (the run's heartbeat) fresh for `ptbjobs status`."""
    from ptbjobs.train.progress import PlainReporter, ProgressFileReporter  # torch: only where a run trains
    from ptbjobs.train.runner import run_training

    config, data_dir = read_spec(run_dir)
    reporter = ProgressFileReporter(run_dir, PlainReporter())
    return run_training(config, run_dir, data_dir, reporter=reporter)


def main(argv: list[str]) -> int:
    """`python -m ptbjobs.executors.job RUN_DIR`: one run of a packed job, as its own process. Exit codes as
    `ptbjobs train`: 0 done, 75 stopped with its state saved, 3 diverged, 2 bad input, else failed."""
    import socket
    import time

    from ptbjobs.core.errors import ConfigError, PtbjobsError

    if len(argv) != 1:
        print("usage: python -m ptbjobs.executors.job RUN_DIR", file=sys.stderr)
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
    defer_stop_signals()  # first: a signal may come while torch is still being imported
    sys.exit(main(sys.argv[1:]))
