"""Synthetic sweep folders, laid out exactly as real runs leave them, with made-up metrics: for
testing `status` and `report` against known numbers, and for benchmarking the CLI on 1,000 runs
(analysis/bench_cli.py imports it from here). No training."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

from ptbjobs.core import states
from ptbjobs.core.atomic import atomic_write_bytes
from ptbjobs.sweep.folder import Sweep
from ptbjobs.sweep.grid import config_hash, run_key
from ptbjobs.train.config import TrainConfig
from ptbjobs.train.run_dir import PROGRESS_FILE, RunDir


def make_sweep(path: Path, runs: int = 1000, epochs: int = 13, seed: int = 0) -> Sweep:
    """A sweep of `runs` local runs: most COMPLETED, some RUNNING (alive-looking heartbeat, but no
    process: they read FAILED, as a killed worker would), some FAILED, DIVERGED and PENDING."""
    rng = random.Random(seed)
    sweep = Sweep(path)
    jobs_dir = path / "local" / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"version": 1, "name": path.name, "runs": {}}
    now = time.time()
    for i in range(runs):
        config = TrainConfig(cell="lstm" if i % 2 == 0 else "gru", dropout=[0.0, 0.25][(i // 2) % 2],
                             seed=i // 4 + 1, epochs=epochs)
        key = run_key(config)
        job_id = f"L{i + 1}"
        manifest["runs"][key] = {"config": config.to_dict(), "config_hash": config_hash(config),
                                 "point": {"cell": config.cell.value, "dropout": config.dropout, "seed": config.seed},
                                 "jobs": [{"job_id": job_id, "executor": "local", "submitted": now - 3600}]}
        kind = rng.choices(["done", "running", "failed", "diverged", "pending"], [80, 8, 5, 2, 5])[0]
        _write(jobs_dir / f"{job_id}.json", {"job_id": job_id, "number": i + 1, "run": key,
                                              "state": states.PENDING if kind == "pending" else states.RUNNING,
                                              "pid": None, "started": now - 3000})
        run = RunDir(path / key)
        run.create()
        if kind == "pending":
            continue
        done = epochs if kind == "done" else rng.randint(1, epochs - 1)
        history = [_epoch(e, config, rng) for e in range(1, done + 1)]
        if kind == "done":
            best = min(history, key=lambda r: r["valid_ppl"])
            history.append({"final": True, "test_ppl": best["valid_ppl"] * 0.96, "best_epoch": best["epoch"],
                            "best_valid_ppl": best["valid_ppl"], "epochs": epochs, "steps": best["steps"],
                            "elapsed_s": history[-1]["elapsed_s"] + 5, "truncated": False})
            run.write_state(states.COMPLETED)
            _write(jobs_dir / f"{job_id}.end.json", {"state": states.COMPLETED, "exit_code": 0, "ended": now})
        elif kind == "diverged":
            run.write_state(states.DIVERGED, message="training diverged: loss is nan")
            _write(jobs_dir / f"{job_id}.end.json", {"state": states.FAILED, "exit_code": 3, "ended": now})
        elif kind == "failed":
            run.write_state(states.FAILED, message="RuntimeError: out of memory")
            _write(jobs_dir / f"{job_id}.end.json", {"state": states.FAILED, "exit_code": 1, "ended": now})
        else:
            run.write_state(states.RUNNING)
            _write(path / key / PROGRESS_FILE, {"time": now - 5, "epoch": done + 1, "chunk": 1000, "chunks": 2324,
                                                "lr": 1.0, "train_ppl": 90.0, "tokens_per_s": 9000.0,
                                                "elapsed_s": history[-1]["elapsed_s"] + 40})
        run.write_metrics(history)
    sweep.write_manifest(manifest)
    return sweep


def _epoch(epoch: int, config: TrainConfig, rng: random.Random) -> dict:
    floor = 118.0 if config.dropout == 0 else 96.0
    valid = floor + 70.0 * math.exp(-0.45 * (epoch - 1)) + rng.uniform(-1, 1)
    return {"epoch": epoch, "lr": 1.0, "train_ppl": valid * (0.9 - 0.03 * epoch), "valid_ppl": valid,
            "tokens_per_s": 9000.0, "elapsed_s": 110.0 * epoch, "steps": 2324 * epoch}


def _write(path: Path, value: dict) -> None:
    atomic_write_bytes(path, json.dumps(value).encode())
