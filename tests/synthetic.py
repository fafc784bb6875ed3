"""Synthetic sweep folders, laid out exactly as real runs leave them, with made-up metrics: for
testing `status` and `report` against known numbers, and for benchmarking the CLI on 1,000 runs
(analysis/bench_cli.py and analysis/bench_scale.py import it from here). No training."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

from ptbjobs.core import states
from ptbjobs.core.atomic import atomic_write_bytes
from ptbjobs.sweep.folder import MANIFEST_VERSION, Sweep, stored_config
from ptbjobs.sweep.grid import config_hash, run_key
from ptbjobs.train.config import FIELD_DEFAULTS, TrainConfig
from ptbjobs.train.run_dir import PROGRESS_FILE, RunDir

# how often each kind of run comes: done (COMPLETED), running, failed, diverged, pending
DEFAULT_MIX = {"done": 80, "running": 8, "failed": 5, "diverged": 2, "pending": 5}


def make_sweep(path: Path, runs: int = 1000, epochs: int = 13, seed: int = 0, mix: dict[str, int] | None = None,
               durable: bool = True) -> Sweep:
    """A sweep of `runs` local runs: most COMPLETED, some RUNNING (alive-looking heartbeat, but no
    process: they read FAILED, as a killed worker would), some FAILED, DIVERGED and PENDING, in the
    proportions of `mix`. Its runs are those of `synthetic_grid(runs, epochs)`. `durable=False`
    writes plainly, without fsync: for building 100,000 runs in seconds, not minutes."""
    write = _write_durable if durable else _write_fast
    rng = random.Random(seed)
    mix = mix or DEFAULT_MIX
    sweep = Sweep(path)
    jobs_dir = path / "local" / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"version": MANIFEST_VERSION, "name": path.name, "runs": {}, "config_defaults": FIELD_DEFAULTS}
    now = time.time()
    for i in range(runs):
        config = TrainConfig(cell="lstm" if i % 2 == 0 else "gru", dropout=[0.0, 0.25][(i // 2) % 2],
                             seed=i // 4 + 1, epochs=epochs)
        key = run_key(config)
        job_id = f"L{i + 1}"
        manifest["runs"][key] = {"config": stored_config(manifest, config.to_dict()), "config_hash": config_hash(config),
                                 "point": {"cell": config.cell.value, "dropout": config.dropout, "seed": config.seed},
                                 "jobs": [{"job_id": job_id, "executor": "local", "submitted": now - 3600}]}
        kind = rng.choices(list(mix), list(mix.values()))[0]
        write(jobs_dir / f"{job_id}.json", {"job_id": job_id, "number": i + 1, "run": key,
                                              "state": states.PENDING if kind == "pending" else states.RUNNING,
                                              "pid": None, "started": now - 3000})
        run = RunDir(path / key)
        run.path.mkdir()
        if kind == "pending":
            continue
        done = epochs if kind == "done" else rng.randint(1, epochs - 1)
        history = [_epoch(e, config, rng) for e in range(1, done + 1)]
        if kind == "done":
            best = min(history, key=lambda r: r["valid_ppl"])
            history.append({"final": True, "test_ppl": best["valid_ppl"] * 0.96, "best_epoch": best["epoch"],
                            "best_valid_ppl": best["valid_ppl"], "epochs": epochs, "steps": best["steps"],
                            "elapsed_s": history[-1]["elapsed_s"] + 5, "truncated": False})
            write(run.state_path, {"state": states.COMPLETED, "time": now})
            write(jobs_dir / f"{job_id}.end.json", {"state": states.COMPLETED, "exit_code": 0, "ended": now})
        elif kind == "diverged":
            write(run.state_path, {"state": states.DIVERGED, "time": now, "message": "training diverged: loss is nan"})
            write(jobs_dir / f"{job_id}.end.json", {"state": states.FAILED, "exit_code": 3, "ended": now})
        elif kind == "failed":
            write(run.state_path, {"state": states.FAILED, "time": now, "message": "RuntimeError: out of memory"})
            write(jobs_dir / f"{job_id}.end.json", {"state": states.FAILED, "exit_code": 1, "ended": now})
        else:
            write(run.state_path, {"state": states.RUNNING, "time": now})
            write(path / key / PROGRESS_FILE, {"time": now - 5, "epoch": done + 1, "chunk": 1000, "chunks": 2324,
                                                "lr": 1.0, "train_ppl": 90.0, "tokens_per_s": 9000.0,
                                                "elapsed_s": history[-1]["elapsed_s"] + 40})
        write(run.metrics_path, "".join(json.dumps(record) + "\n" for record in history))
    sweep.write_manifest(manifest)
    # no slot for the queued jobs: the supervisor a command starts for them starts none of them
    # (they have nothing to train, and a benchmark must not time a worker failing in the background)
    write(path / "local" / "settings.json", {"max_parallel": 0, "max_parallel_given": None, "resources": {}})
    return sweep


def synthetic_grid(runs: int, epochs: int = 13, name: str = "synthetic") -> str:
    """The grid file whose runs are those of `make_sweep(runs=runs, epochs=epochs)` (a multiple of 4)."""
    seeds = ", ".join(str(s) for s in range(1, runs // 4 + 1))
    return (f'name = "{name}"\n[defaults]\nepochs = {epochs}\n[axes]\ncell = ["lstm", "gru"]\n'
            f'dropout = [0.0, 0.25]\nseed = [{seeds}]\n')


def _epoch(epoch: int, config: TrainConfig, rng: random.Random) -> dict:
    floor = 118.0 if config.dropout == 0 else 96.0
    valid = floor + 70.0 * math.exp(-0.45 * (epoch - 1)) + rng.uniform(-1, 1)
    return {"epoch": epoch, "lr": 1.0, "train_ppl": valid * (0.9 - 0.03 * epoch), "valid_ppl": valid,
            "tokens_per_s": 9000.0, "elapsed_s": 110.0 * epoch, "steps": 2324 * epoch}


def _write_durable(path: Path, value: dict | str) -> None:
    atomic_write_bytes(path, (value if isinstance(value, str) else json.dumps(value)).encode())


def _write_fast(path: Path, value: dict | str) -> None:
    path.write_text(value if isinstance(value, str) else json.dumps(value))
