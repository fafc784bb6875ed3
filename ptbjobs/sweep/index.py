"""The sweep index: what `status` needs of each finished run, so that a command reads the folders
(and asks the scheduler about the jobs) only of the runs still going.

    <sweep>/index/finished.jsonl   a line per finished run: its status row, the job and config it
                                   finished with, and the size and time of the files the row was
                                   read from

A run is finished when its own folder says COMPLETED or DIVERGED: no command resumes it, so its row
never changes. The first command to see it so (status, or submit's wait) appends its line under the
sweep lock; appending costs a line, and a line cut by a crash is skipped (the run is indexed again).
A line holds only while the run is as it was then: its latest job and config unchanged (a run set
aside and started afresh has a new job), and metrics.jsonl and state.json of the same size and
time (a damaged or rewritten file is read again). Checking costs two stat calls per run, where
reading its files cost five reads and a parse.

A plain file of JSON lines, not SQLite: the sweep folder may be on NFS or Lustre, where SQLite's
locking is not safe.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ptbjobs.core import states
from ptbjobs.core.atomic import append_records, read_records
from ptbjobs.sweep.folder import Sweep, latest_job
from ptbjobs.train.run_dir import RunDir

METRICS_FILE, STATE_FILE = RunDir("").metrics_path.name, RunDir("").state_path.name

FINISHED = frozenset({states.COMPLETED, states.DIVERGED})  # a run in these never changes again
INDEX_FILE = "index/finished.jsonl"
# file times may be coarse (whole seconds on some network filesystems): a run whose files changed
# this close to the look that read them waits for the next look to be indexed
CLOCK_SLACK_S = 2.0


def index_path(sweep: Sweep) -> Path:
    return sweep.path / INDEX_FILE


def read_index(sweep: Sweep, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run key -> its indexed status row, for the runs whose line still holds (see above)."""
    found: dict[str, dict[str, Any]] = {}
    records, _ = read_records(index_path(sweep))
    for record in records:
        if isinstance(record, dict) and isinstance(record.get("row"), dict):
            found[record["row"].get("key")] = record  # a run indexed again: its last line counts
    holding = {}
    for key, record in found.items():
        entry = manifest["runs"].get(key)
        if entry is not None and _still_holds(sweep, key, entry, record):
            holding[key] = record["row"]
    return holding


def add_to_index(sweep: Sweep, manifest: dict[str, Any], rows: list[dict[str, Any]], read_from: float) -> None:
    """Index these runs' status rows, read from their folders from time `read_from` on: the
    finished ones whose files have not changed since (a file rewritten while its row was read is
    read again next time). Only if the sweep lock is free at once (a command never waits on a
    submit to show a table) and the folder can be written (a sweep someone else owns is still
    shown, only not faster next time)."""
    rows = [row for row in rows if row["state"] in FINISHED and row["problem"] is None and row["key"] in manifest["runs"]]
    if not rows:
        return
    try:
        with sweep.locked(wait=False) as held:
            if not held:
                return
            records = []
            for row in rows:
                entry = manifest["runs"][row["key"]]
                stamps = _stamps(os.path.join(sweep.path, row["key"]))
                if stamps is None or any(mtime_ns >= (read_from - CLOCK_SLACK_S) * 1e9 for _, mtime_ns in stamps):
                    continue
                job = latest_job(entry)
                records.append({"row": row, "job_id": job["job_id"] if job else None,
                                "config_hash": entry["config_hash"], "files": stamps})
            index_path(sweep).parent.mkdir(exist_ok=True)
            append_records(index_path(sweep), records)
    except OSError:
        pass  # read-only, full or someone else's: the index is only a cache


def _still_holds(sweep: Sweep, key: str, entry: dict[str, Any], record: dict[str, Any]) -> bool:
    job = latest_job(entry)
    if record.get("job_id") != (job["job_id"] if job else None) or record.get("config_hash") != entry["config_hash"]:
        return False
    return _stamps(os.path.join(sweep.path, key)) == record.get("files")


def _stamps(run_dir: str) -> list[list[int]] | None:
    """(size, mtime in ns) of a run folder's metrics.jsonl and state.json; None if either is
    missing. (Plain strings: at 100,000 runs a Path per file costs as much as the stat.)"""
    stamps = []
    for name in (METRICS_FILE, STATE_FILE):
        try:
            info = os.stat(os.path.join(run_dir, name))
        except OSError:
            return None
        stamps.append([info.st_size, info.st_mtime_ns])
    return stamps
