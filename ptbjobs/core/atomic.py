"""Crash-safe file writes: a reader sees the old content or the new, never a mix."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
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


# the temp file a write goes through: `.<name>.<mkstemp's 8 random characters>.tmp`
_TEMP_NAME = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


def temp_file_target(name: str) -> str | None:
    """The file name a temp file of `atomic_write_bytes` was to become; None for any other name."""
    match = _TEMP_NAME.fullmatch(name)
    return match.group(1) if match else None


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temp file beside `path`, fsync it, rename it over `path`, fsync the folder (so
    the rename itself survives a power cut). A failed write (a full disk) leaves `path` as it was
    and removes its temp file where the disk still lets it; its OSError names `path`."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            os.fchmod(out.fileno(), _FILE_MODE)
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, path)
    except BaseException as exc:
        try:
            os.unlink(temp_name)
        except OSError:  # a disk gone read-only: left to a cleanup (a run removes its own at its next start)
            pass
        if isinstance(exc, OSError) and exc.filename is None:  # write() and fsync() name no file
            exc.filename = str(path)
        raise
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_unsynced(path: Path, payload: bytes) -> None:
    """Like `atomic_write_bytes`, without its two fsyncs: a reader sees the old content or the new,
    but a power cut may lose the write. For many small files written in one go (a submit's 100,000
    spec.json) followed by one `flush_filesystem`: two fsyncs each cost a 100,000-run submit
    minutes. The temp name carries the pid, so two writers never share one."""
    temp = path.parent / f".{path.name}.{os.getpid() % 16**8:08x}.tmp"
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
    try:
        try:
            os.write(descriptor, payload)
        finally:
            os.close(descriptor)
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)
        raise


def flush_filesystem(path: Path) -> None:
    """Make every write so far to the filesystem holding `path` durable: syncfs(2) where the C
    library has it (one filesystem, not every mount of the machine as sync(2) would), else sync."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        if syncfs(descriptor) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), str(path))
    finally:
        os.close(descriptor)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, json.dumps(value).encode())


def read_json_if_any(path: Path) -> Any:
    """The JSON in `path`, or None if there is none yet (or it is not JSON: a record being
    replaced is never half-written, so that means someone else's file)."""
    try:
        with open(path, "rb") as handle:  # (a str path too: cheaper than a Path where thousands are read)
            return json.loads(handle.read())
    except (FileNotFoundError, ValueError):
        return None


def append_records(path: Path, records: list[Any]) -> None:
    """Append JSON records to a journal, one line each, in one write, then fsync. A line cut by a
    crash or a full disk before it is ended first: the records after it stay whole lines. Call with
    the lock of whatever the journal belongs to held (one writer at a time)."""
    if not records:
        return
    payload = "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in records).encode()
    with open(path, "ab+") as out:
        size = out.seek(0, os.SEEK_END)
        if size:
            out.seek(size - 1)
            if out.read(1) != b"\n":
                payload = b"\n" + payload
        out.write(payload)
        out.flush()
        os.fsync(out.fileno())


def read_records(path: Path) -> tuple[list[Any], int]:
    """The records of a journal, and how many of its lines are not records (cut by a crash, a
    full disk, or damaged): those are skipped, so one bad line never hides the others."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    records, bad = [], 0
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            bad += 1
    return records, bad
