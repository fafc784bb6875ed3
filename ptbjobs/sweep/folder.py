"""The sweep folder: the grid as submitted, the manifest, and one folder per run.

    runs/<sweep>/
      grid.toml        the grid file as last submitted
      manifest.json    per run: its config, the hash of it, and every job it has had (id, executor, time)
      manifest.journal what changed since manifest.json was written: a run's entry anew per line
      .lock            taken (flock) by every command that changes the manifest
      index/           what status and report need of each finished run (sweep/index.py)
      local/           the local executor's job records
      <run key>/       the run folder (see train/run_dir.py), with spec.json (what to train) and logs/

The manifest changes only under the lock, so two `submit`s of one grid cannot both start a run. A
change is appended to the journal (a line per run changed): recording one job id costs a line, not
a rewrite of the entries of 100,000 runs. Once the journal outgrows manifest.json, the two are
folded into a new manifest.json (replaced atomically) and the journal is emptied; replaying a line
twice gives the same entry, so a crash between the two loses nothing. A line cut by a crash is
skipped. A run's config is kept as its differences from `config_defaults` (the defaults when the
manifest was first written): a run's entry is a few hundred bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from ptbjobs.core.atomic import append_records, atomic_write_bytes, read_records, try_exclusive_lock
from ptbjobs.core.errors import ConfigError, PtbjobsError
from ptbjobs.train.config import FIELD_DEFAULTS

MANIFEST_VERSION = 2  # 2: the journal, and configs as differences from config_defaults
# the journal is folded into manifest.json once it is larger than this and than manifest.json
COMPACT_AFTER_BYTES = 4 << 20


class Sweep:
    def __init__(self, path: Path):
        self.path = Path(path)

    manifest_path = property(lambda self: self.path / "manifest.json")
    journal_path = property(lambda self: self.path / "manifest.journal")
    grid_path = property(lambda self: self.path / "grid.toml")

    def run_dir(self, key: str) -> Path:
        return self.path / key

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    @contextlib.contextmanager
    def locked(self, wait: bool = True) -> Iterator[bool]:
        """Hold the sweep's lock: commands that change the manifest run one at a time. With
        `wait=False`, yields False at once (holding nothing) if another process has it."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a") as handle:
            if wait:
                fcntl.flock(handle, fcntl.LOCK_EX)
            elif not try_exclusive_lock(handle):
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read_manifest(self) -> dict[str, Any]:
        """manifest.json with the journal's changes applied."""
        try:
            manifest = json.loads(self.manifest_path.read_bytes())
        except FileNotFoundError:
            manifest = {"version": MANIFEST_VERSION, "name": self.path.name, "runs": {},
                        "config_defaults": FIELD_DEFAULTS}
        except ValueError as exc:
            raise PtbjobsError(f"{self.manifest_path} is not valid JSON ({exc})",
                               "it is only written atomically: restore it from a backup") from None
        changes, _ = read_records(self.journal_path)
        for change in changes:
            if isinstance(change, dict) and "run" in change:
                manifest["runs"][change["run"]] = change["entry"]
            elif isinstance(change, dict) and "set" in change:
                manifest.update(change["set"])
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace manifest.json whole, with the journal folded in (it is then emptied)."""
        manifest["updated"] = time.time()
        manifest["version"] = MANIFEST_VERSION
        atomic_write_bytes(self.manifest_path, (json.dumps(manifest, separators=(",", ":")) + "\n").encode())
        if self.journal_path.exists():
            atomic_write_bytes(self.journal_path, b"")

    def update_manifest(self, manifest: dict[str, Any], keys: Iterable[str] = (), **fields: Any) -> None:
        """Record the entries of `keys` as they are now in `manifest`, and top-level `fields`
        (set in `manifest` too): a journal line each. Call with the lock held."""
        manifest.update(fields)
        # the fields last: a line cut by a crash loses them before any run entry (the send ledger
        # clears a batch's "sending" mark only where its runs' job ids are on record)
        changes = [{"run": key, "entry": manifest["runs"][key]} for key in keys] + ([{"set": fields}] if fields else [])
        if not self.manifest_path.exists():
            self.write_manifest(manifest)  # a new sweep's first entries: the manifest itself
            return
        append_records(self.journal_path, changes)
        size = self.journal_path.stat().st_size
        if size > COMPACT_AFTER_BYTES and size > self.manifest_path.stat().st_size:
            self.write_manifest(manifest)

    def modified(self) -> float:
        """When the manifest last changed."""
        times = [p.stat().st_mtime for p in (self.manifest_path, self.journal_path) if p.exists()]
        return max(times, default=0.0)

    def write_grid_copy(self, text: str) -> None:
        atomic_write_bytes(self.grid_path, text.encode())


def run_config(manifest: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A run's config, every field present: the manifest keeps only its differences from the
    defaults it was written with (a manifest of version 1 kept every field but those added later)."""
    return {**FIELD_DEFAULTS, **manifest.get("config_defaults", {}), **entry["config"]}


def stored_config(manifest: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """What the manifest keeps of a run's config: its differences from the manifest's defaults."""
    defaults = {**FIELD_DEFAULTS, **manifest.get("config_defaults", {})}
    return {k: v for k, v in config.items() if k not in defaults or defaults[k] != v}


def latest_job(entry: dict[str, Any]) -> dict[str, Any] | None:
    jobs = entry.get("jobs") or []
    return jobs[-1] if jobs else None


def find_sweep(sweep_dir: Path | None, root: Path = Path("runs")) -> Sweep:
    """--sweep-dir if given; else the sweep under ./runs submitted to most recently."""
    if sweep_dir is not None:
        sweep = Sweep(sweep_dir)
        if not sweep.exists():
            raise ConfigError(None, f"--sweep-dir {sweep_dir} is not a sweep folder (no manifest.json)",
                              "give the folder `ptbjobs submit` made, e.g. runs/<name>")
        return sweep
    candidates = [p.parent for p in root.glob("*/manifest.json")] if root.is_dir() else []
    if not candidates:
        raise ConfigError(None, "no sweep found under ./runs", "submit one with `ptbjobs submit --grid FILE`, or give --sweep-dir")
    newest = max(candidates, key=lambda p: Sweep(p).modified())
    return Sweep(newest)
