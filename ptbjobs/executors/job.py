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


def run_fused(run_dirs: list[Path]) -> dict[str, Any]:
    """Train these runs as fused packs in one process (train/pack_runner.py): by run folder, each
    one's final record or the error that ended it. Each run logs to its own reporter."""
    from ptbjobs.core.errors import ConfigError
    from ptbjobs.train.pack_runner import run_pack
    from ptbjobs.train.progress import PlainReporter, ProgressFileReporter

    specs = [(run_dir, *read_spec(run_dir)) for run_dir in run_dirs]
    data_dirs = {data_dir for _, _, data_dir in specs}
    if len(data_dirs) != 1:
        raise ConfigError(None, f"runs of one fused pack read different data folders ({', '.join(map(str, data_dirs))})",
                          "submit them in one grid")
    runs = [(config, run_dir, ProgressFileReporter(run_dir, PlainReporter(prefix=f"{run_dir.name}: ")))
            for run_dir, config, _ in specs]
    return run_pack(runs, data_dirs.pop())


def main(argv: list[str]) -> int:
    """`python -m ptbjobs.executors.job RUN_DIR...`: one run of a packed job, as its own process,
    or several as fused packs. Exit codes as `ptbjobs train`: 0 done, 75 stopped with its state
    saved, 3 diverged, 2 bad input, else failed (of several runs: the first run's that did not finish)."""
    import socket
    import time

    from ptbjobs.core.errors import ConfigError, PtbjobsError

    if not argv:
        print("usage: python -m ptbjobs.executors.job RUN_DIR...", file=sys.stderr)
        return 2
    run_dirs = [Path(arg) for arg in argv]
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] ptbjobs job: {', '.join(map(str, run_dirs))} on "
          f"{socket.gethostname()}, pid {os.getpid()}", flush=True)
    try:
        for run_dir in run_dirs:
            if not (run_dir / SPEC_FILE).is_file():
                raise ConfigError(None, f"{run_dir / SPEC_FILE} not found", "is RUN_DIR a run folder that ptbjobs submit wrote?")
        if len(run_dirs) == 1:
            run_job(run_dirs[0])
            return 0
        failed = [(path, outcome) for path, outcome in run_fused(run_dirs).items() if isinstance(outcome, BaseException)]
        for path, outcome in failed:
            print(f"ptbjobs: error: {path}: {outcome}", file=sys.stderr, flush=True)
        return failed[0][1].exit_code if failed and isinstance(failed[0][1], PtbjobsError) else 1 if failed else 0
    except PtbjobsError as exc:
        print(f"ptbjobs: {'error: ' if exc.is_error else ''}{exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except ValueError as exc:  # a damaged spec.json
        print(f"ptbjobs: error: spec.json of {', '.join(map(str, run_dirs))}: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    defer_stop_signals()  # first: a signal may come while torch is still being imported
    sys.exit(main(sys.argv[1:]))
