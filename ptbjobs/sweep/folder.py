"""The sweep folder: the grid as submitted, the manifest, and one folder per run.

    runs/<sweep>/
      grid.toml        the grid file as last submitted
      manifest.json    per run: its config, the hash of it, and every job it has had (id, executor, time)
      .lock            taken (flock) by every command that changes the manifest
      local/           the local executor's job records
      <run key>/       the run folder (see train/run_dir.py), with spec.json (what to train) and logs/

The manifest is only ever replaced whole (atomically), under the lock, so two `submit`s of one grid
cannot both start a run, and a reader never sees half of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from pathlib import Path
from typing import Any, Iterator

from ptbjobs.core.atomic import atomic_write_bytes
from ptbjobs.core.errors import ConfigError, PtbjobsError

MANIFEST_VERSION = 1


class Sweep:
    def __init__(self, path: Path):
        self.path = Path(path)

    manifest_path = property(lambda self: self.path / "manifest.json")
    grid_path = property(lambda self: self.path / "grid.toml")

    def run_dir(self, key: str) -> Path:
        return self.path / key

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the sweep's lock: commands that change the manifest run one at a time."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return {"version": MANIFEST_VERSION, "name": self.path.name, "runs": {}}
        except ValueError as exc:
            raise PtbjobsError(f"{self.manifest_path} is not valid JSON ({exc})",
                               "it is only written atomically: restore it from a backup") from None
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["updated"] = time.time()
        atomic_write_bytes(self.manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())

    def write_grid_copy(self, text: str) -> None:
        atomic_write_bytes(self.grid_path, text.encode())


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
    newest = max(candidates, key=lambda p: (p / "manifest.json").stat().st_mtime)
    return Sweep(newest)
