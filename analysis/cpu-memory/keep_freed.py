"""A solo run's training speed on a CPU with glibc's malloc keeping freed memory (what every
training process does, core/memory.py) and with glibc's defaults, in alternating rounds.

    python analysis/cpu-memory/keep_freed.py --data-dir DATA [--rounds 5] [--steps 60]

Each round trains the model of the study (LSTM 2x200, batch 20, bptt 20) in two fresh processes in
turn, one each way, on all of this machine's cores; each times `steps` steps after 10 of warm-up.
Prints each round, the medians and their ratio.
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


def _train(keep: bool, steps: int, data_dir: str) -> float:
    """In a child process: tokens/s of `steps` steps of one run."""
    import ptbjobs.train.trainer as trainer_module
    from ptbjobs.train.bench import scratch_run
    from ptbjobs.train.config import TrainConfig
    from ptbjobs.train.corpus import load_corpus

    if not keep:
        trainer_module.keep_freed_memory = lambda: False  # glibc's defaults: freed blocks go back to the kernel
    config = TrainConfig(checkpoint_every_min=0, checkpoint_every_steps=0)
    corpus = load_corpus(data_dir)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = trainer_module.Trainer(config, corpus, scratch_run(Path(scratch) / "run"))
        trainer.run_steps(10)
        start = time.perf_counter()
        trainer.run_steps(steps)
        return steps * config.batch_size * config.bptt / (time.perf_counter() - start)


def _round(keep: bool, steps: int, data_dir: str) -> float:
    done = subprocess.run([sys.executable, __file__, "--child", "keep" if keep else "default", str(steps), data_dir],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(_train(sys.argv[2] == "keep", int(sys.argv[3]), sys.argv[4]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    import torch

    print(f"one solo run, LSTM 2x200, bptt 20, batch 20, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}; "
          f"{args.steps} steps per process, {args.rounds} rounds")
    kept, default = [], []
    for round_ in range(args.rounds):
        kept.append(_round(True, args.steps, args.data_dir))
        default.append(_round(False, args.steps, args.data_dir))
        print(f"  round {round_ + 1}: freed memory kept {kept[-1]:,.0f} tokens/s, glibc's defaults {default[-1]:,.0f}")
    print(f"freed memory kept {statistics.median(kept):,.0f} tokens/s, glibc's defaults {statistics.median(default):,.0f}, "
          f"ratio {statistics.median(kept) / statistics.median(default):.2f}x")


if __name__ == "__main__":
    main()
