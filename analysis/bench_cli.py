"""How fast the CLI answers: `ptbjobs --help`, and `ptbjobs status` on a synthetic sweep of 1,000
runs (goals: under 0.5 s and under 1 s). Each command runs as a fresh process, as a user runs it;
the figure is the median of several runs.

    python analysis/bench_cli.py [--runs 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import make_sweep  # noqa: E402 - the tests' builder of synthetic sweep folders


def timed(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    ptbjobs = shutil.which("ptbjobs") or str(Path(sys.executable).parent / "ptbjobs")
    with tempfile.TemporaryDirectory() as scratch:
        sweep = make_sweep(Path(scratch) / "synthetic", runs=args.runs)
        figures = {
            "ptbjobs --help": timed([ptbjobs, "--help"], args.repeat),
            f"ptbjobs status ({args.runs} runs, table)": timed([ptbjobs, "status", "--sweep-dir", str(sweep.path)], args.repeat),
            f"ptbjobs status ({args.runs} runs, --json)": timed([ptbjobs, "status", "--sweep-dir", str(sweep.path), "--json"], args.repeat),
        }
    for name, seconds in figures.items():
        print(f"{name:<40} {seconds:6.3f} s  (median of {args.repeat})")


if __name__ == "__main__":
    main()
