"""Atomic, self-checking checkpoint files.

A checkpoint is one file: a header line `PTBJOBS-CKPT 1 <sha256> <length>` and then the bytes of a
`torch.save` of plain tensors, numbers, strings, lists and dicts (so it loads with
`weights_only=True`: nothing in it can run code). It is written to a temp file, fsynced and renamed
into place, so a crash leaves either the old file or the new one, never a torn one; the sha256 still
catches a file damaged afterwards (a truncated copy, a bad disk). The newest few are kept, and
loading falls back to an older one when the newest does not check out.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import torch

from ptbjobs.core.atomic import atomic_write_bytes
from ptbjobs.core.errors import CheckpointError, PtbjobsError, first_line
from ptbjobs.train.config import TrainConfig

log = logging.getLogger(__name__)

MAGIC = b"PTBJOBS-CKPT"
FORMAT_VERSION = 1
_NAME = re.compile(r"ckpt-(\d+)\.pt")


def encode(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = b"%s %d %s %d\n" % (MAGIC, FORMAT_VERSION, hashlib.sha256(payload).hexdigest().encode(), len(payload))
    return header + payload


def decode(blob: bytes, source: str = "checkpoint") -> dict[str, Any]:
    """The state stored in `blob`, or CheckpointError saying exactly what is wrong with it."""
    newline = blob.find(b"\n", 0, 256)
    fields = blob[:newline].split() if newline > 0 else []
    if len(fields) != 4 or fields[0] != MAGIC or not fields[1].isdigit() or not fields[3].isdigit():
        raise CheckpointError(f"{source}: not a ptbjobs checkpoint (bad header)")
    if int(fields[1]) != FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format {int(fields[1])}, this ptbjobs reads {FORMAT_VERSION}")
    payload = blob[newline + 1 :]
    expected_length = int(fields[3])
    if len(payload) != expected_length:
        raise CheckpointError(f"{source}: truncated ({len(payload)} of {expected_length} bytes)")
    if hashlib.sha256(payload).hexdigest().encode() != fields[2]:
        raise CheckpointError(f"{source}: sha256 mismatch, the file is corrupt")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad payload; its text runs over lines
        raise CheckpointError(f"{source}: unreadable payload ({first_line(exc)})") from None


def save(folder: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `ckpt-<step>.pt` atomically, then delete all but the newest `keep`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt-{step:09d}.pt"
    atomic_write_bytes(path, encode(state))
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def load_latest(folder: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that checks out, with its path; None if there is none at all.
    A bad newer one is reported as a warning and skipped; if every one is bad, CheckpointError."""
    problems = []
    for path in reversed(list_checkpoints(folder)):
        try:
            state = decode(path.read_bytes(), source=str(path))
        except (CheckpointError, OSError) as exc:
            problems.append(str(exc))
            log.warning("skipping checkpoint: %s", exc)
            continue
        return state, path
    if problems:
        raise CheckpointError("no usable checkpoint: " + "; ".join(problems),
                              "delete the run folder's checkpoints/ to start the run afresh")
    return None


def save_weights(path: Path, model: torch.nn.Module, config: TrainConfig, vocab_size: int, epoch: int, valid_ppl: float) -> None:
    """Weights plus what is needed to rebuild the model: a plain dict, never a pickled module."""
    buffer = io.BytesIO()
    torch.save({"config": config.to_dict(), "vocab_size": vocab_size, "model": own_tensors(model.state_dict()),
                "epoch": epoch, "valid_ppl": valid_ppl}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def own_tensors(value: Any) -> Any:
    """A tensor (or a dict of them) that views part of a larger storage, copied to a storage of its
    own: torch.save writes a view's whole storage, and a run of a fused pack views its slice of the
    pack's weights."""
    if isinstance(value, dict):
        return {key: own_tensors(tensor) for key, tensor in value.items()}
    if value.untyped_storage().nbytes() > value.numel() * value.element_size():
        return value.clone()
    return value


def load_weights(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PtbjobsError(f"no weights file {path}", "the run has not finished an epoch yet") from None
    except Exception as exc:  # torch raises many types for a damaged file; its text runs over lines
        raise PtbjobsError(f"{path}: not a readable weights file ({first_line(exc)})") from None
