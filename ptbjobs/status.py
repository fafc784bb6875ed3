"""`ptbjobs status`: every run of a sweep in one table, from the run folders and one executor
query. Nothing here imports torch, so it answers in a fraction of a second even for 1,000 runs.

The `--json` schema (version 1) is one object:
    {"version": 1, "sweep": name, "dir": path, "time": unix time,
     "summary": {state: count, ...},
     "runs": [{"key", "cell", "dropout", "seed", "executor", "job_id", "attempts", "state",
               "epoch", "epochs", "train_ppl", "valid_ppl", "best_valid_ppl", "test_ppl",
               "elapsed_s", "eta_s"}, ...]}
Numbers the run has not produced yet are null.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from ptbjobs import states
from ptbjobs.launch import run_states
from ptbjobs.rundir import PROGRESS_FILE, RunDir
from ptbjobs.sweep import Sweep, latest_job

STATUS_SCHEMA_VERSION = 1


def collect(sweep: Sweep) -> dict[str, Any]:
    manifest = sweep.read_manifest()
    current = run_states(sweep, manifest)
    now = time.time()
    rows = [_row(sweep, key, entry, current[key], now) for key, entry in manifest["runs"].items()]
    return {"version": STATUS_SCHEMA_VERSION, "sweep": manifest.get("name", sweep.path.name),
            "dir": str(sweep.path), "time": now, "summary": dict(Counter(r["state"] for r in rows)), "runs": rows}


def _row(sweep: Sweep, key: str, entry: dict[str, Any], state: str, now: float) -> dict[str, Any]:
    config = entry["config"]
    run = RunDir(sweep.run_dir(key))
    records = run.read_metrics()
    epochs_done = [r for r in records if "epoch" in r]
    final = records[-1] if records and records[-1].get("final") else None
    last = epochs_done[-1] if epochs_done else None
    job = latest_job(entry)
    progress = _read_progress(run) if state == states.RUNNING else None
    elapsed = final["elapsed_s"] if final else last["elapsed_s"] if last else None
    if progress:
        elapsed = progress["elapsed_s"] + max(0.0, now - progress["time"])
    return {
        "key": key, "cell": config["cell"], "dropout": config["dropout"], "seed": config["seed"],
        "executor": job["executor"] if job else None, "job_id": job["job_id"] if job else None,
        "attempts": len(entry.get("jobs", [])), "state": state,
        "epoch": len(epochs_done), "epochs": config["epochs"],
        "train_ppl": last["train_ppl"] if last else None, "valid_ppl": last["valid_ppl"] if last else None,
        "best_valid_ppl": min((r["valid_ppl"] for r in epochs_done), default=None),
        "test_ppl": final["test_ppl"] if final else None,
        "elapsed_s": elapsed, "eta_s": _eta(config, epochs_done, progress) if state == states.RUNNING else None,
    }


def _read_progress(run: RunDir) -> dict[str, Any] | None:
    try:
        return json.loads((run.path / PROGRESS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _eta(config: dict[str, Any], epochs_done: list[dict[str, Any]], progress: dict[str, Any] | None) -> float | None:
    """Remaining epochs times the time an epoch takes (measured so far)."""
    if progress is None or not progress.get("tokens_per_s"):
        return None
    tokens_per_epoch = progress["chunks"] * config["bptt"] * config["batch_size"]
    epoch_s = tokens_per_epoch / progress["tokens_per_s"]
    if epochs_done and len(epochs_done) > 0:
        epoch_s = epochs_done[-1]["elapsed_s"] / len(epochs_done)  # evaluation included
    left = config["epochs"] - len(epochs_done) - progress["chunk"] / max(progress["chunks"], 1)
    return max(0.0, left) * epoch_s


# ---- rendering ----

STATE_STYLES = {states.COMPLETED: "green", states.RUNNING: "cyan", states.PENDING: "yellow",
                states.REQUEUED: "yellow", states.NOT_SUBMITTED: "dim italic", states.DIVERGED: "bold magenta",
                states.LOST: "bold magenta", states.UNKNOWN: "dim italic"}


def render_table(status: dict[str, Any]):
    from rich.table import Table

    table = Table(title=f"sweep {status['sweep']}  ({status['dir']})", title_justify="left")
    for column, justify in [("run", "left"), ("cell", "left"), ("dropout", "right"), ("seed", "right"),
                            ("job", "left"), ("state", "left"), ("epoch", "right"), ("train", "right"),
                            ("valid", "right"), ("best valid", "right"), ("test", "right"),
                            ("elapsed", "right"), ("ETA", "right"), ("tries", "right")]:
        table.add_column(column, justify=justify, no_wrap=True)
    for r in status["runs"]:
        style = STATE_STYLES.get(r["state"], "red" if r["state"] in states.RETRYABLE else "")
        state = f"[{style}]{r['state']}[/]" if style else r["state"]
        table.add_row(r["key"], r["cell"], f"{r['dropout']:g}", str(r["seed"]),
                      f"{r['job_id']}" if r["job_id"] else "-", state, f"{r['epoch']}/{r['epochs']}",
                      _num(r["train_ppl"]), _num(r["valid_ppl"]), _num(r["best_valid_ppl"]), _num(r["test_ppl"]),
                      _dur(r["elapsed_s"]), _dur(r["eta_s"]), str(max(r["attempts"], 0)))
    return table


def summary_line(status: dict[str, Any]) -> str:
    counts = status["summary"]
    order = sorted(counts, key=lambda s: (s != states.COMPLETED, s != states.RUNNING, s))
    ended = sum(n for s, n in counts.items() if states.is_finished(s))
    return f"{len(status['runs'])} runs: " + ", ".join(f"{counts[s]} {s}" for s in order) + \
        f"  ({ended} ended)"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
