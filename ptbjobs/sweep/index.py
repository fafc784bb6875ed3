"""The sweep index: what `status` needs of each finished run, so that a command reads the folders
(and asks the scheduler about the jobs) only of the runs still going.

    <sweep>/index/finished.jsonl   a line per finished run: its status row, the job and config it
                                   finished with, and the size and time of the files the row was
                                   read from
    <sweep>/index/finished.snapshot  the same lines up to some point, pickled: read twice as fast,
                                     each with its status row as JSON text, for status --json

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

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

from ptbjobs.core import states
from ptbjobs.core.atomic import append_records, atomic_write_bytes
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


# A line is a JSON list: the format's version, the run's key, the config hash and job it finished
# with, the size and time of its metrics.jsonl and state.json, then its status row's values in
# ROW_FIELDS order (a list, not an object: at 100,000 runs the names would double what is read).
INDEX_FORMAT = 1
ROW_FIELDS = ("cell", "dropout", "seed", "executor", "job_id", "attempts", "state", "epoch", "epochs", "train_ppl",
              "valid_ppl", "best_valid_ppl", "test_ppl", "elapsed_s")
_HEAD = 8  # version, key, config hash, job id, two (size, time) pairs
_ROW_KEYS = ("key", *ROW_FIELDS, "eta_s", "problem")  # a status row's fields, in the order collect gives them


class IndexedRow(dict):
    """A finished run's status row, read from the index: a dict, with its JSON text where the
    snapshot kept it (`status --json` writes that text, where encoding 100,000 rows again took half
    a second). Never changed once read, so the text stays its own."""

    __slots__ = ("text",)


def read_index(sweep: Sweep, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run key -> its indexed status row, for the runs whose line still holds (see above)."""
    found: dict[str, list[Any]] = {}
    width = _HEAD + len(ROW_FIELDS)
    for line in _lines(sweep):  # (a snapshot's line ends with its row's JSON text)
        if isinstance(line, list) and width <= len(line) <= width + 1 and line[0] == INDEX_FORMAT:
            found[line[1]] = line  # a run indexed again: its last line counts
    if not found:
        return {}
    # this loop runs once per finished run, 100,000 times in a large sweep: it stats the two files
    # by names relative to the sweep folder (a shorter path walk) and builds each row in one call
    runs, stat, holding = manifest["runs"], os.stat, {}
    try:
        folder = os.open(sweep.path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return {}
    try:
        for key, line in found.items():
            entry = runs.get(key)
            if entry is None or line[2] != entry["config_hash"]:
                continue
            jobs = entry.get("jobs")
            if line[3] != (jobs[-1]["job_id"] if jobs else None):
                continue  # set aside and started afresh, say
            try:
                metrics, state = stat(f"{key}/{METRICS_FILE}", dir_fd=folder), stat(f"{key}/{STATE_FILE}", dir_fd=folder)
            except OSError:
                continue
            if (metrics.st_size != line[4] or metrics.st_mtime_ns != line[5] or state.st_size != line[6]
                    or state.st_mtime_ns != line[7]):
                continue  # a file changed since: damaged, or rewritten
            row = holding[key] = IndexedRow(zip(_ROW_KEYS, [key, *line[_HEAD:width], None, None]))
            row.text = line[width] if len(line) > width else None
    finally:
        os.close(folder)
    return holding


def _lines(sweep: Sweep) -> list[Any]:
    """The index's lines: the snapshot's, then those the journal gained since it was taken."""
    snapshot, covered, check = _read_snapshot(sweep)
    try:
        with open(index_path(sweep), "rb") as journal:
            if covered:
                journal.seek(covered - len(check))
                if journal.read(len(check)) != check:
                    snapshot, covered = [], 0  # not this journal's snapshot: it was deleted and begun anew
            journal.seek(covered)
            data = journal.read()
    except FileNotFoundError:
        return []
    return snapshot + _parse(data)


def _parse(data: bytes) -> list[Any]:
    """Journal lines, parsed in one call (a line cut by a crash: then line by line, skipping it)."""
    try:
        return json.loads(b"[" + b",".join(line for line in data.split(b"\n") if line) + b"]")
    except ValueError:
        return [record for record in map(_record_or_none, data.split(b"\n")) if record is not None]


def _record_or_none(line: bytes) -> Any:
    try:
        return json.loads(line) if line else None
    except ValueError:
        return None


# ---- the snapshot: the journal's lines up to a point, in a form read twice as fast ----
#
# At 100,000 runs parsing the journal's JSON is a sixth of what status costs. The snapshot holds the
# same lines, pickled: one read of plain lists, strings and numbers, loaded by an unpickler that
# refuses anything else (the sweep may be someone else's, and a pickle naming a class could run
# code). It records how many bytes of the journal it covers, and their last bytes, so a journal
# deleted and begun anew is never read through an old snapshot. It is only a cache: damaged,
# missing or unreadable, the journal is read whole.

SNAPSHOT_FILE = "index/finished.snapshot"
_SNAPSHOT_MAGIC = b"ptbjobs index snapshot, journal bytes: "
_CHECK_BYTES = 64
# taken again once the journal has grown this much beyond it: a few snapshots over a sweep's life
_SNAPSHOT_AFTER_BYTES = 1 << 20


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name}: an index snapshot holds plain values only")


def _read_snapshot(sweep: Sweep) -> tuple[list[Any], int, bytes]:
    """(lines, journal bytes they cover, the last of those bytes); ([], 0, b"") if there is none
    that can be read."""
    try:
        data = (sweep.path / SNAPSHOT_FILE).read_bytes()
        covered, start = _snapshot_header(data)
        version, check, lines = _PlainUnpickler(io.BytesIO(data[start:])).load()
        if version == INDEX_FORMAT and isinstance(check, bytes) and isinstance(lines, list) and covered >= len(check):
            return lines, covered, check
    except Exception:  # noqa: BLE001 - any damage at all: the journal is read whole instead
        pass
    return [], 0, b""


def _snapshot_header(data: bytes) -> tuple[int, int]:
    """(journal bytes the snapshot covers, where its pickle starts): the first line says, so that
    deciding whether to take a new one reads a line, not the snapshot. ValueError if not a snapshot."""
    if not data.startswith(_SNAPSHOT_MAGIC):
        raise ValueError("not an index snapshot")
    end = data.index(b"\n", len(_SNAPSHOT_MAGIC))
    return int(data[len(_SNAPSHOT_MAGIC):end]), end + 1


def _snapshot_due(sweep: Sweep) -> bool:
    """Whether the journal has grown well beyond the last snapshot (or has none, and is large)."""
    try:
        with open(sweep.path / SNAPSHOT_FILE, "rb") as snapshot:
            covered = _snapshot_header(snapshot.read(len(_SNAPSHOT_MAGIC) + 24))[0]
    except (OSError, ValueError):
        covered = 0
    try:
        size = index_path(sweep).stat().st_size
    except OSError:
        return False
    return size - covered >= max(_SNAPSHOT_AFTER_BYTES, covered // 4)


def _take_snapshot(sweep: Sweep) -> None:
    """The journal's lines so far (each run's last), pickled. Call with the sweep lock held."""
    data = index_path(sweep).read_bytes()
    width = _HEAD + len(ROW_FIELDS)
    latest = {line[1]: line for line in _parse(data) if isinstance(line, list) and len(line) == width}
    # each line with its row's JSON text, as json.dumps writes the row read_index makes of it
    lines = [[*line, json.dumps(IndexedRow(zip(_ROW_KEYS, [line[1], *line[_HEAD:], None, None])))]
             for line in latest.values()]
    payload = pickle.dumps((INDEX_FORMAT, data[-_CHECK_BYTES:], lines), protocol=5)
    atomic_write_bytes(sweep.path / SNAPSHOT_FILE, _SNAPSHOT_MAGIC + b"%d\n" % len(data) + payload)


def add_to_index(sweep: Sweep, manifest: dict[str, Any], rows: list[dict[str, Any]], read_from: float) -> None:
    """Index these runs' status rows, read from their folders from time `read_from` on: the
    finished ones whose files have not changed since (a file rewritten while its row was read is
    read again next time). Only if the sweep lock is free at once (a command never waits on a
    submit to show a table) and the folder can be written (a sweep someone else owns is still
    shown, only not faster next time). The snapshot is taken again here when the journal has
    grown well beyond it."""
    rows = [row for row in rows if row["state"] in FINISHED and row["problem"] is None and row["key"] in manifest["runs"]]
    if not rows and not _snapshot_due(sweep):
        return
    try:
        with sweep.locked(wait=False) as held:
            if not held:
                return
            lines = []
            for row in rows:
                entry = manifest["runs"][row["key"]]
                stamps = _stamps(f"{sweep.path}/{row['key']}")
                if stamps is None or any(mtime_ns >= (read_from - CLOCK_SLACK_S) * 1e9 for mtime_ns in stamps[1::2]):
                    continue
                lines.append([INDEX_FORMAT, row["key"], entry["config_hash"], _job_id(entry), *stamps,
                              *(row[name] for name in ROW_FIELDS)])
            index_path(sweep).parent.mkdir(exist_ok=True)
            append_records(index_path(sweep), lines)
            if _snapshot_due(sweep):
                _take_snapshot(sweep)
    except OSError:
        pass  # read-only, full or someone else's: the index is only a cache


def _job_id(entry: dict[str, Any]) -> str | None:
    job = latest_job(entry)
    return job["job_id"] if job else None


def _stamps(run_dir: str) -> list[int] | None:
    """Size and mtime (ns) of a run folder's metrics.jsonl, then of its state.json; None if either
    is missing. (Plain strings: at 100,000 runs a Path per file costs as much as the stat.)"""
    stamps = []
    for name in (METRICS_FILE, STATE_FILE):
        try:
            info = os.stat(f"{run_dir}/{name}")
        except OSError:
            return None
        stamps += [info.st_size, info.st_mtime_ns]
    return stamps
