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


def main(argv: list[str]) -> int:
    """`python -m ptbjobs.job RUN_DIR`: one run of a packed job, as its own process. Exit codes as
    `ptbjobs train`: 0 done, 75 stopped with its state saved, 3 diverged, else failed."""
    from ptbjobs.errors import PtbjobsError

    try:
        run_job(Path(argv[0]))
    except PtbjobsError as exc:
        print(f"ptbjobs: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
