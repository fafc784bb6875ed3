"""How the sweep commands scale: `status`, `status --json`, `submit --dry-run` and `report` on a
synthetic sweep of N runs (95% finished, 1% running, the rest failed or queued), each run as a
fresh process, as a user runs it, the median of `--repeat` runs; and the resident memory of each.

    python analysis/bench_scale.py --runs 100000 [--repeat 3] [--keep DIR]

Goals (issue 27): at 100,000 runs status and status --json <= 5 s, submit --dry-run <= 10 s,
report <= 60 s, each under 1 GB resident; at 1,000 runs status <= 0.5 s.

The sweep is built without fsync (seconds, not minutes) in a scratch folder, with a grid file
whose runs are the sweep's, so that --dry-run plans against it. The first `status` after building
is timed apart ("first look"): it is the one that finds the finished runs and indexes them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import make_sweep, synthetic_grid  # noqa: E402 - the tests' builder of synthetic sweep folders

# 95% finished (94 completed, 1 diverged), 1% running, 2% failed, 2% queued
SCALE_MIX = {"done": 94, "diverged": 1, "running": 1, "failed": 2, "pending": 2}


def timed(command: list[str], repeat: int, cwd: Path) -> tuple[float, float]:
    """(median seconds, largest resident memory in MB) of `repeat` runs of the command."""
    times, peaks = [], []
    for _ in range(repeat):
        with tempfile.TemporaryFile() as errors:
            start = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, cwd=cwd)
            _, status, usage = os.wait4(process.pid, 0)  # this child's own peak memory, not all children's
            times.append(time.perf_counter() - start)
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0:
                errors.seek(0)
                raise SystemExit(f"{' '.join(command)} failed (exit {process.returncode}): {errors.read().decode().strip()}")
        peaks.append(usage.ru_maxrss / 1024)  # kB on Linux
    return statistics.median(times), max(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs in the sweep (a multiple of 4)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-report", action="store_true", help="time only status and submit --dry-run")
    parser.add_argument("--keep", type=Path, help="build the sweep here and leave it (default: a scratch folder)")
    args = parser.parse_args()
    ptbjobs = shutil.which("ptbjobs") or str(Path(sys.executable).parent / "ptbjobs")
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        run_bench(ptbjobs, scratch, args)
    finally:
        _stop_supervisor(scratch / "runs" / "synthetic")
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def _stop_supervisor(sweep: Path) -> None:
    """The synthetic queued runs keep the local executor's supervisor (started by the first status)
    waiting for a slot that never comes: stop it with the benchmark."""
    try:
        os.kill(json.loads((sweep / "local" / "supervisor.json").read_text())["pid"], signal.SIGTERM)
    except (OSError, ValueError, KeyError):
        pass


def run_bench(ptbjobs: str, scratch: Path, args: argparse.Namespace) -> None:
    n = args.runs
    start = time.perf_counter()
    sweep = make_sweep(scratch / "runs" / "synthetic", runs=n, mix=SCALE_MIX, durable=False)
    grid = scratch / "synthetic.toml"
    grid.write_text(synthetic_grid(n))
    print(f"built a sweep of {n} runs in {time.perf_counter() - start:.1f} s ({os.cpu_count()} CPUs)", flush=True)
    data = Path(os.environ.get("PTBJOBS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "ptb"))
    status = [ptbjobs, "status", "--sweep-dir", str(sweep.path)]
    commands = {"status": status, "status --json": status + ["--json"],
                "submit --dry-run": [ptbjobs, "submit", "--grid", str(grid), "--sweep-dir", str(sweep.path),
                                     "--executor", "local", "--dry-run", "--yes", "--data-dir", str(data)]}
    if not args.skip_report:
        commands["report"] = [ptbjobs, "report", "--sweep-dir", str(sweep.path), "--out", str(scratch / "report")]
    first, first_mb = timed(status, 1, scratch)
    print(f"status, first look ({n} runs): {first:.2f} s, {first_mb:.0f} MB", flush=True)
    for name, command in commands.items():
        seconds, peak_mb = timed(command, args.repeat, scratch)
        print(f"{name} ({n} runs): {seconds:.2f} s  (median of {args.repeat}; resident {peak_mb:.0f} MB)", flush=True)


if __name__ == "__main__":
    main()
