"""A fused pack of K runs against K solo runs side by side, on this machine's CPU cores.

    python analysis/fused-cpu/side_by_side.py --data-dir DATA [--runs 2 4] [--rounds 5] [--steps 40]

In each round, in turn: one process trains a fused pack of K runs (seeds 1..K, all the cores),
then K processes each train one run at once (cores / K threads each, as the local executor or a
Slurm pack splits them). Every process loads its data and warms up, then waits; all are let go at
once, and the figure is the tokens trained over the wall clock from then until the last of them
is done (a process that ends first leaves the others the machine: its spare time is counted, as a
user waiting for the K runs would). Prints each round and the medians, with their ratio (fused /
side by side): the machine is noisy, so the two are measured in alternation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _train(kind: str, runs: int, seed: int, steps: int, data_dir: str) -> None:
    """In a child process: 20 steps of warm-up (a fused process's threads take longer to reach
    their pace), "ready", and once told to go (a line on stdin), `steps` steps; prints the tokens
    trained and the time it was done."""
    from ptbjobs.train.bench import scratch_run
    from ptbjobs.train.config import TrainConfig
    from ptbjobs.train.corpus import load_corpus
    from ptbjobs.train.pack import PackTrainer
    from ptbjobs.train.trainer import Trainer

    config = TrainConfig(checkpoint_every_min=0, checkpoint_every_steps=0)
    corpus = load_corpus(data_dir)
    with tempfile.TemporaryDirectory() as scratch:
        if kind == "fused":
            model = PackTrainer([Trainer(config.replace(seed=s), corpus, scratch_run(Path(scratch) / f"r{s}"),
                                         solo_step=False) for s in range(1, runs + 1)])
        else:
            model = Trainer(config.replace(seed=seed), corpus, scratch_run(Path(scratch) / "r"))
            runs = 1
        model.run_steps(20)
        print("ready", flush=True)
        sys.stdin.readline()
        model.run_steps(steps)
        print(runs * steps * config.batch_size * config.bptt, time.time(), flush=True)


def _together(children: list[subprocess.Popen]) -> float:
    """Tokens/s of processes let go at once: their tokens over the time until the last is done."""
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    start = time.time()
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    ends = [child.communicate()[0].split() for child in children]
    return sum(int(tokens) for tokens, _ in ends) / (max(float(end) for _, end in ends) - start)


def _child(kind: str, runs: int, seed: int, threads: int, steps: int, data_dir: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, __file__, "--child", kind, str(runs), str(seed), str(steps), data_dir],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        kind, runs, seed, steps, data_dir = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
        _train(kind, runs, seed, steps, data_dir)
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--runs", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    import torch

    print(f"fused pack vs solo runs side by side: LSTM 2x200, bptt 20, batch 20, {cores} cores, torch {torch.__version__}; "
          f"{args.steps} steps per process, {args.rounds} rounds")
    for runs in args.runs:
        fused, side = [], []
        for round_ in range(args.rounds):
            fused.append(_together([_child("fused", runs, 1, cores, args.steps, args.data_dir)]))
            side.append(_together([_child("solo", 1, seed, max(1, cores // runs), args.steps, args.data_dir)
                                   for seed in range(1, runs + 1)]))
            print(f"  K={runs} round {round_ + 1}: fused {fused[-1]:,.0f} tokens/s, side by side {side[-1]:,.0f}")
        print(f"K={runs}: fused {statistics.median(fused):,.0f} tokens/s, side by side {statistics.median(side):,.0f}, "
              f"ratio {statistics.median(fused) / statistics.median(side):.2f}x")


if __name__ == "__main__":
    main()
