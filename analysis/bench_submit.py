"""`ptbjobs submit` of many runs to a real Slurm cluster, then `status` and `cancel` of them: each
a fresh process, timed with its own peak resident memory. The jobs are held (`--hold`), so
nothing trains; the script checks that every run went out exactly once, and that cancel left none
of the sweep's jobs queued.

    SLURM_MAX_JOB_COUNT=120000 bash slurm/up.sh    # room for 100,000 held tasks (default 10,000)
    python analysis/bench_submit.py --runs 100000

Goal (issue 27): a submit of 100,000 runs in at most 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_scale import timed  # noqa: E402 - one way of timing a command for both benchmarks

from synthetic import synthetic_grid  # noqa: E402


def queued_tasks(prefix: str) -> int:
    """Tasks the controller holds, queued or running, whose job name starts with `prefix`."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%j"], capture_output=True, text=True, check=True).stdout
    return sum(1 for name in out.split() if name.startswith(prefix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs to submit (a multiple of 4)")
    args = parser.parse_args()
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    max_jobs = int(re.search(r"MaxJobCount\s*=\s*(\d+)", config).group(1))
    if max_jobs < args.runs + 100:
        raise SystemExit(f"the cluster's MaxJobCount is {max_jobs}: too few for {args.runs} held tasks "
                         f"(SLURM_MAX_JOB_COUNT={args.runs + 20000} bash slurm/up.sh raises it)")
    ptbjobs = shutil.which("ptbjobs") or str(Path(sys.executable).parent / "ptbjobs")
    data = Path(os.environ.get("PTBJOBS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "ptb"))
    scratch = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    name = f"held{args.runs}"
    prefix = f"ptbjobs-{name}:"
    try:
        grid = scratch / "grid.toml"
        grid.write_text(synthetic_grid(args.runs, name=name) + '[resources]\ntimeout_min = 10\nextra_sbatch = ["--hold"]\n')
        sweep = scratch / name
        submit = [ptbjobs, "submit", "--grid", str(grid), "--sweep-dir", str(sweep), "--executor", "slurm", "--yes",
                  "--data-dir", str(data)]
        seconds, peak = timed(submit, 1, scratch)
        print(f"submit ({args.runs} held runs to Slurm): {seconds:.2f} s  (resident {peak:.0f} MB)", flush=True)
        runs = json.loads(subprocess.run([ptbjobs, "status", "--sweep-dir", str(sweep), "--json"], capture_output=True,
                                         text=True, check=True).stdout)["runs"]
        job_ids = [run["job_id"] for run in runs]
        queued = queued_tasks(prefix)
        print(f"  {len(runs)} runs, {len(set(job_ids))} distinct job ids, {queued} tasks queued under the sweep's name",
              flush=True)
        if not (len(runs) == len(set(job_ids)) == queued == args.runs):
            raise SystemExit("not every run went out exactly once")
        seconds, peak = timed([ptbjobs, "status", "--sweep-dir", str(sweep)], 1, scratch)
        print(f"status ({args.runs} queued Slurm runs): {seconds:.2f} s  (resident {peak:.0f} MB)", flush=True)
        seconds, peak = timed([ptbjobs, "cancel", "--sweep-dir", str(sweep)], 1, scratch)
        time.sleep(2)
        left = queued_tasks(prefix)
        print(f"cancel ({args.runs} queued Slurm runs): {seconds:.2f} s  (resident {peak:.0f} MB); "
              f"{left} tasks left queued", flush=True)
        if left:
            raise SystemExit("cancel left tasks queued")
    finally:
        out = subprocess.run(["squeue", "-h", "-o", "%F|%j"], capture_output=True, text=True).stdout
        arrays = {line.split("|")[0] for line in out.split() if line.split("|")[1].startswith(prefix)}
        if arrays:
            subprocess.run(["scancel", *arrays], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
