"""One run's folder on disk, the only place a run's state lives.

    RUN/
      config.json      the resolved training config and the data it read
      metrics.jsonl    one record per epoch, then a final record (test perplexity, best epoch)
      best.pt          weights of the best-validation epoch, naming it (plain torch.save of a dict)
      checkpoints/     the resumable state, newest two
      state.json       RUNNING, COMPLETED, DIVERGED, FAILED or INTERRUPTED, with a timestamp
      progress.json    while training: epoch, step, train ppl, tokens/s, elapsed (the heartbeat)
Every file is replaced atomically, so a reader (status, report) never sees half a file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from ptbjobs.core import states
from ptbjobs.core.atomic import atomic_write_bytes, temp_file_target
from ptbjobs.core.errors import ConfigError, PtbjobsError

PROGRESS_FILE = "progress.json"
_TAIL_BYTES = 4096  # more than a final record takes
# What the disk under a run folder says when it, not ptbjobs, is at fault: full, over quota, read-only,
# not ours to write, failing, or a network share gone stale. Others (ENOENT, EISDIR...) stay tracebacks.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                         errno.EIO, errno.ESTALE})


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

    @contextlib.contextmanager
    def disk_errors(self) -> Iterator[None]:
        """Turn the disk's refusal to write a file of this folder (see DISK_ERRNOS) into one line
        naming the folder: the user's to fix, and a traceback would bury it. Any other error,
        and one about a file elsewhere, passes through as it is."""
        try:
            yield
        except OSError as exc:
            relative = self._relative(exc.filename) if exc.errno in DISK_ERRNOS else None
            if relative is None:
                raise
            raise RunFolderUnwritable(self.path, relative, exc.strerror) from exc

    def _relative(self, filename: Any) -> str | None:
        """`filename` relative to the folder ("" for the folder itself), or None if not in it."""
        if not isinstance(filename, (str, os.PathLike)):
            return None
        folder, file = os.path.realpath(self.path), os.path.realpath(filename)
        if os.path.commonpath([folder, file]) != folder:
            return None
        relative = Path(os.path.relpath(file, folder))
        if relative == Path("."):
            return ""
        target = temp_file_target(relative.name)  # the file being written, not its temp name
        return str(relative.with_name(target) if target else relative)

    def remove_leftover_temp_files(self) -> list[Path]:
        """Remove the temp files of this run's own writes that a killed process left behind
        (a power cut, SIGKILL); call with the run's lock held, so none is being written now.
        Temp files of others' files (spec.json, written by submit) are left alone."""
        own = {"config.json", "metrics.jsonl", "best.pt", "state.json", PROGRESS_FILE}
        found = [p for p in self.path.glob(".*.tmp") if temp_file_target(p.name) in own]
        found += [p for p in self.checkpoint_dir.glob(".ckpt-*.tmp") if temp_file_target(p.name)]
        for path in found:
            path.unlink(missing_ok=True)
        return found

    def write_json(self, path: Path, value: Any) -> None:
        atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())

    def read_config(self) -> dict[str, Any] | None:
        """config.json, or None before the run first started; DamagedFile if it is not a config record."""
        record = _read_json(self.config_path)
        if record is not None and not (isinstance(record, dict) and isinstance(record.get("train"), dict)):
            raise DamagedFile(self.config_path, "is not a run config record")
        return record

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl whole: the history lives in the checkpoint, so the file always
        matches the state a resumed run continues from."""
        text = "".join(json.dumps(record) + "\n" for record in records)
        atomic_write_bytes(self.metrics_path, text.encode())

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every record of metrics.jsonl; DamagedFile if any line is not one (the file is only
        ever replaced whole, so a cut or garbled line means something else damaged it)."""
        try:
            text = self.metrics_path.read_text()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise DamagedFile(self.metrics_path, f"cannot be read ({exc})") from None
        if text and not text.endswith("\n"):
            raise DamagedFile(self.metrics_path, "is cut short (its last line is incomplete)")
        try:  # every line at once (the report reads 100,000 of these files); line by line to say which is bad
            records = json.loads("[" + ",".join(line for line in text.splitlines() if line.strip()) + "]")
            if all(isinstance(record, dict) for record in records):
                return records
        except ValueError:
            pass
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                raise DamagedFile(self.metrics_path, f"line {number} is not a metrics record")
            records.append(record)
        return records

    def final_record(self) -> dict[str, Any] | None:
        """The final record (test perplexity at the best epoch) if the run has finished, else None;
        DamagedFile if the file's last line is cut or not a record. Reads only the file's tail:
        every command asks this of every completed run."""
        try:
            with open(self.metrics_path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - _TAIL_BYTES))
                tail = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DamagedFile(self.metrics_path, f"cannot be read ({exc})") from None
        if not tail:
            return None
        if not tail.endswith(b"\n"):
            raise DamagedFile(self.metrics_path, "is cut short (its last line is incomplete)")
        try:
            record = json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise DamagedFile(self.metrics_path, "ends with a line that is not a metrics record")
        return record if record.get("final") else None

    def write_state(self, state: str, **details: Any) -> None:
        """state.json: one of `states.FOLDER_STATES`, when, where, and what else the writer says."""
        if state not in states.FOLDER_STATES:
            raise ValueError(f"{state!r} is not a run folder's state")  # a bug, not user input
        record = {"state": state, "time": time.time(), "host": socket.gethostname(),
                  "pid": os.getpid(), **details}
        self.write_json(self.state_path, record)

    def read_state(self) -> dict[str, Any] | None:
        """state.json, or None before the run first started; DamagedFile if it is not a state
        record."""
        record = _read_json(self.state_path)
        if record is not None and not (isinstance(record, dict) and record.get("state") in states.FOLDER_STATES):
            raise DamagedFile(self.state_path, "is not a run state record")
        return record


class DamagedFile(PtbjobsError):
    """A file of a run folder that cannot be read as what it should be. Every such file is
    replaced atomically, so this is damage from outside (a bad copy, a full disk, a hand edit):
    it concerns its run alone, which resumes from its last checkpoint and writes the file anew."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path} {problem}", "it is written anew when the run resumes: ptbjobs retry, or train again")
        self.path = path
        self.problem = problem


class RunFolderUnwritable(PtbjobsError):
    """The disk refused a write to the run folder (full, read-only, no permission). The last
    checkpoint is intact: every write goes through a temp file."""

    def __init__(self, folder: Path, relative: str, problem: str):
        where = f", writing {relative}" if relative else ""
        super().__init__(f"cannot write run folder {folder}: {problem}{where}",
                         "free space there or make it writable, then run the same command: "
                         "a run resumes from its last checkpoint")
        self.folder = folder


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedFile(path, f"cannot be read ({exc})") from None
    except ValueError as exc:
        raise DamagedFile(path, f"is not valid JSON ({exc})") from None
