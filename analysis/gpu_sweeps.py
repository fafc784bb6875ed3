"""Run grids side by side on one GPU machine through ptbjobs, and keep a compact record of them.

    python3 analysis/gpu_sweeps.py --data-dir DATA --out OUT [--time-limit S] GRID [GRID ...]

Each grid is submitted with the local executor, every run of it at once (runs of this size leave a
GPU mostly idle; packing them is what `runs_per_gpu` does on Slurm). The script then watches
`ptbjobs status --json` until every run has ended or the time limit has passed, and writes to OUT:

  curves.txt             every run's state, valid perplexity per epoch, best valid, test, time
  <sweep>-results.md     `ptbjobs report --include-incomplete` of each sweep

Runs still going at the time limit are left running, and stopped ones resume: calling the script
again with the same grids on the same machine carries on where the runs are (completed runs are
skipped by `ptbjobs submit`). Works from a checkout without installing it (the repo on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for ptbjobs, without installing the package

from ptbjobs.sweep.grid import load_grid  # noqa: E402
from ptbjobs.core.states import is_finished  # noqa: E402


def ptbjobs(*args: str, capture: bool = True) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "ptbjobs", *args], env=env, cwd=REPO, text=True,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"ptbjobs {' '.join(args)} failed ({done.returncode}):\n{done.stdout or ''}")
    return done.stdout or ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grids", nargs="+", type=Path)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--time-limit", type=float, default=540.0, help="seconds to watch before writing the record")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    sweeps = []
    for path in args.grids:
        grid = load_grid(path)  # ptbjobs's own reading: the sweep's name and how many runs it has
        sweep = REPO / "runs" / grid.name
        print(ptbjobs("submit", "--grid", str(path.resolve()), "--sweep-dir", str(sweep), "--executor", "local",
                      "--data-dir", args.data_dir, "--max-parallel", str(len(grid.runs))))
        sweeps.append(sweep)
    while time.monotonic() - start < args.time_limit:
        states = [run["state"] for sweep in sweeps for run in status(sweep)["runs"]]
        print(f"{time.monotonic() - start:5.0f} s: " + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))), flush=True)
        if all(is_finished(state) for state in states):
            break
        time.sleep(30)
    write_record(sweeps, args.out, time.monotonic() - start)


def status(sweep: Path) -> dict:
    return json.loads(ptbjobs("status", "--sweep-dir", str(sweep), "--json"))


def write_record(sweeps: list[Path], out: Path, watched_s: float) -> None:
    lines = [f"watched {watched_s:.0f} s"]
    for sweep in sweeps:
        lines.append(f"\n## {sweep.name}")
        for run in status(sweep)["runs"]:
            metrics = sweep / run["key"] / "metrics.jsonl"
            records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
            epochs = [r for r in records if "valid_ppl" in r]
            final = next((r for r in records if r.get("final")), {})
            curve = " ".join(f"{r['valid_ppl']:.1f}" for r in epochs)
            best = min((r["valid_ppl"] for r in epochs), default=float("nan"))
            lines.append(f"{run['key']:<16} {run['state']:<10} epochs {len(epochs):>2}  best valid {best:7.2f}  "
                         f"test {final.get('test_ppl', float('nan')):7.2f}  elapsed {run['elapsed_s'] or 0:6.0f} s")
            lines.append(f"    valid by epoch: {curve}")
        report_dir = out / f"{sweep.name}-report"
        ptbjobs("report", "--sweep-dir", str(sweep), "--include-incomplete", "--out", str(report_dir))
        shutil.copy(report_dir / "results.md", out / f"{sweep.name}-results.md")
        shutil.rmtree(report_dir)  # the figures stay in the sweep folder; only the table travels
    (out / "curves.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
