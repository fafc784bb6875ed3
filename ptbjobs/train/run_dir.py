"""One run's folder on disk, the only place a run's state lives.

    RUN/
      config.json      the resolved training config and the data it read
      metrics.jsonl    one record per epoch, then a final record (test perplexity, best epoch)
      best.pt          weights of the best-validation epoch (plain torch.save of a dict)
      checkpoints/     the resumable state, newest two
      state.json       RUNNING, COMPLETED, DIVERGED, FAILED or INTERRUPTED, with a timestamp
      progress.json    while training: epoch, step, train ppl, tokens/s, elapsed (the heartbeat)
Every file is replaced atomically, so a reader (status, report) never sees half a file.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from ptbjobs.core import states
from ptbjobs.core.atomic import atomic_write_bytes
from ptbjobs.core.errors import ConfigError, PtbjobsError

PROGRESS_FILE = "progress.json"


class RunDir:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    best_path = property(lambda self: self.path / "best.pt")
    checkpoint_dir = property(lambda self: self.path / "checkpoints")
    state_path = property(lambda self: self.path / "state.json")

    def create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(None, f"--out {self.path} is a file, not a folder", "give a folder path")
        self.path.mkdir(parents=True, exist_ok=True)

    def write_json(self, path: Path, value: Any) -> None:
        atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())

    def read_config(self) -> dict[str, Any] | None:
        return _read_json(self.config_path)

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl whole: the history lives in the checkpoint, so the file always
        matches the state a resumed run continues from."""
        text = "".join(json.dumps(record) + "\n" for record in records)
        atomic_write_bytes(self.metrics_path, text.encode())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def write_state(self, state: str, **details: Any) -> None:
        """state.json: one of `states.FOLDER_STATES`, when, where, and what else the writer says."""
        if state not in states.FOLDER_STATES:
            raise ValueError(f"{state!r} is not a run folder's state")  # a bug, not user input
        record = {"state": state, "time": time.time(), "host": socket.gethostname(),
                  "pid": os.getpid(), **details}
        self.write_json(self.state_path, record)

    def read_state(self) -> dict[str, Any] | None:
        return _read_json(self.state_path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PtbjobsError(f"{path} cannot be read ({exc})",
                           "it is written atomically, so something else changed it: move the run folder aside") from None
