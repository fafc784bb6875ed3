"""The study's 15 final runs (analysis/study/final/: 5 variants x seeds 1-3) trained as fused
packs, one process per pack shape, all at once, timed wall clock from the first start to the last
end; then each variant's mean valid perplexity against its goal and the study's own result.

    python analysis/fused-gpu/final_runs.py --data DATA_DIR --out RUNS_DIR [--device cuda]

Packs by shape (train/fused.py): the LSTM without and with dropout (6 runs), the GRU likewise (6),
the tied + variational LSTM (3). To try the script on a CPU: --device cpu --epoch-steps 5 --epochs 1
(8 minutes on 2 cores: every epoch is still evaluated on the whole valid and test sets).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ptbjobs.executors.job import write_spec  # noqa: E402 - the repo's own package, run from a checkout
from ptbjobs.train.config import TrainConfig, fusion_key  # noqa: E402

DECAY_1_2 = 1 / 1.2
# variant: (its settings, goal for the mean valid ppl, the study's mean valid ppl; results.md)
VARIANTS = {
    "LSTM, no dropout": ({"cell": "lstm", "lr": 1.0, "decay_after": 4, "lr_decay": 0.5, "epochs": 13}, 119.5, 116.41),
    "GRU, no dropout": ({"cell": "gru", "lr": 0.5, "decay_after": 2, "lr_decay": 0.5, "epochs": 13}, 120.0, 118.01),
    "LSTM, dropout": ({"cell": "lstm", "dropout": 0.275, "weight_decay": 3e-5, "lr": 1.0, "decay_after": 10,
                       "lr_decay": DECAY_1_2, "epochs": 32}, 96.0, 91.56),
    "GRU, dropout": ({"cell": "gru", "dropout": 0.35, "weight_decay": 2e-5, "lr": 0.5, "decay_after": 10,
                      "lr_decay": DECAY_1_2, "epochs": 32}, 99.0, 98.15),
    "LSTM, tied + variational": ({"cell": "lstm", "dropout": 0.25, "variational_dropout": True, "tie_weights": True,
                                  "weight_decay": 3e-5, "lr": 1.0, "decay_after": 10, "lr_decay": DECAY_1_2,
                                  "epochs": 32}, 90.0, 88.64),
}
SEEDS = (1, 2, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the run folders go here (replaced)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, help="cap every run's epochs (to try the script)")
    parser.add_argument("--epoch-steps", type=int, default=0, help="steps per epoch (to try the script)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    packs: dict[tuple, list[Path]] = {}
    for label, (settings, _, _) in VARIANTS.items():
        for seed in SEEDS:
            values = {**settings, "seed": seed, "device": args.device, "epoch_steps": args.epoch_steps}
            if args.epochs:
                values["epochs"] = min(values["epochs"], args.epochs)
            config = TrainConfig.from_mapping(values)
            folder = args.out / f"{_slug(label)}-s{seed}"
            write_spec(folder, config, args.data)
            packs.setdefault(fusion_key(config), []).append(folder)
    start = time.perf_counter()
    jobs = [subprocess.Popen([sys.executable, "-m", "ptbjobs.executors.job", *map(str, folders)],
                             stdout=open(args.out / f"pack-{index}.log", "w"), stderr=subprocess.STDOUT)
            for index, folders in enumerate(packs.values())]
    codes = [job.wait() for job in jobs]
    wall = time.perf_counter() - start
    print(f"{sum(len(f) for f in packs.values())} runs in {len(packs)} fused packs "
          f"({', '.join(str(len(f)) for f in packs.values())} runs), one process each, all at once: "
          f"wall {wall:.1f} s; exit codes {codes}")
    print("| variant | valid (mean of seeds) | seeds | goal | the study's |")
    print("|---|---:|---|---:|---:|")
    for label, (_, goal, study) in VARIANTS.items():
        valid = [_best_valid(args.out / f"{_slug(label)}-s{seed}") for seed in SEEDS]
        if None in valid:
            print(f"| {label} | not finished | | {goal} | {study} |")
            continue
        mean = statistics.mean(valid)
        print(f"| {label} | {mean:.2f} ({'meets' if mean <= goal else 'misses'} its goal; "
              f"{mean - study:+.2f} from the study's) | {', '.join(f'{v:.2f}' for v in valid)} | {goal} | {study} |")
    return 0 if all(code == 0 for code in codes) else 1


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _best_valid(folder: Path) -> float | None:
    try:
        final = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    except (OSError, IndexError, ValueError):
        return None
    return final.get("best_valid_ppl") if final.get("final") else None


if __name__ == "__main__":
    sys.exit(main())
