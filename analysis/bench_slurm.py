"""How fast ptbjobs talks to a real Slurm cluster (the one of slurm/up.sh, or any): `ptbjobs submit`
of a 1,000-run grid (goal: under 10 s), `ptbjobs status` of those runs with the real sacct (goal:
under 1 s), then `ptbjobs cancel` of them all. Each command is a fresh process, as a user runs it.

The runs are submitted held (`extra_sbatch = ["--hold"]`) so that the cluster does not start
training 1,000 models; status is timed while they are queued and again once cancelled.

    python analysis/bench_slurm.py [--runs 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_cli import timed

GRID = """
name = "bench-slurm"
[defaults]
emb_size = 16
hidden_size = 16
epochs = 1
[axes]
cell = ["lstm", "gru"]
dropout = [0.0, 0.5]
seed = {seeds}
[resources]
timeout_min = 10
cpus_per_task = 1
extra_sbatch = ["--hold"]
"""


def once(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="a multiple of 4")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--data-dir", default=None, help="PTB folder (default: ptbjobs's own lookup)")
    args = parser.parse_args()
    ptbjobs = shutil.which("ptbjobs") or str(Path(sys.executable).parent / "ptbjobs")
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    with tempfile.TemporaryDirectory() as scratch:
        grid = Path(scratch) / "grid.toml"
        grid.write_text(GRID.format(seeds=list(range(1, args.runs // 4 + 1))))
        sweep = ["--sweep-dir", str(Path(scratch) / "sweep")]
        submit_s, out = once([ptbjobs, "submit", "--grid", str(grid), "--executor", "slurm", *sweep, *data])
        print(out.splitlines()[0])
        queued = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split()
        status_s = timed([ptbjobs, "status", *sweep], args.repeat)
        status_json_s = timed([ptbjobs, "status", *sweep, "--json"], args.repeat)
        again_s, _ = once([ptbjobs, "submit", "--grid", str(grid), "--executor", "slurm", *sweep, *data])
        cancel_s, _ = once([ptbjobs, "cancel", *sweep])
        time.sleep(2)
        _, last = once([ptbjobs, "status", *sweep])
        cancelled_status_s = timed([ptbjobs, "status", *sweep], args.repeat)
    print(f"tasks in squeue after submit: {len(queued)}")
    print(f"ptbjobs submit ({args.runs} runs, held)        {submit_s:6.2f} s")
    print(f"ptbjobs status (queued, table)         {status_s:6.3f} s  (median of {args.repeat})")
    print(f"ptbjobs status (queued, --json)        {status_json_s:6.3f} s  (median of {args.repeat})")
    print(f"ptbjobs submit again (submits nothing) {again_s:6.2f} s")
    print(f"ptbjobs cancel (all)                   {cancel_s:6.2f} s")
    print(f"ptbjobs status (cancelled, table)      {cancelled_status_s:6.3f} s  (median of {args.repeat})")
    print(f"last status line: {last.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
