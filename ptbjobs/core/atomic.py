"""Crash-safe file writes: a reader sees the old content or the new, never a mix."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def try_exclusive_lock(handle) -> bool:
    """Take an exclusive flock on an open file without waiting; False if another process has it.
    The kernel drops the lock when its holder dies, however it dies."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; give the final file the permissions a plain open() would.
_FILE_MODE = 0o666 & ~_current_umask()


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temp file beside `path`, fsync it, rename it over `path`, fsync the folder (so
    the rename itself survives a power cut)."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            os.fchmod(out.fileno(), _FILE_MODE)
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, json.dumps(value).encode())


def read_json_if_any(path: Path) -> Any:
    """The JSON in `path`, or None if there is none yet (or it is not JSON: a record being
    replaced is never half-written, so that means someone else's file)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
