"""A run's identity: the short hash of everything that decides what it computes.

A run keeps its hash in the manifest; a grid whose run has another hash under the same key has
changed that run (`submit` refuses it unless forced). So the text hashed never changes between
versions: the sorted JSON of the config without the fields a resume may change, a field added in a
later version left out at its default.
"""

from __future__ import annotations

import enum
import hashlib
import json
from typing import Any

from ptbjobs.train.config import FIELD_DEFAULTS, LATER_FIELDS, RESUME_NEUTRAL_FIELDS, TrainConfig


def config_hash(config: TrainConfig) -> str:
    """A short hash of everything that decides what a run computes (a field added in a later
    version counts only away from its default, so existing runs keep their hash): the first 8 hex
    digits of the SHA-256 of `json.dumps(identity, sort_keys=True)`, where identity is the config's
    dict without the resume-neutral fields."""
    return _hash_of_pieces([_hash_piece(name, config.__dict__[name]) for name in _IDENTITY_FIELDS])


def hash_of_changes(changes: dict[str, Any]) -> str:
    """`config_hash` of the config whose fields differ from TrainConfig's defaults only by
    `changes` (coerced values): a grid's run hashed from the few fields its grid sets, the others'
    pieces of text taken ready-made. A 100,000-run grid hashes 100,000 configs."""
    pieces = list(_DEFAULT_PIECES)
    for name, value in changes.items():
        if name in _IDENTITY_INDEX:
            pieces[_IDENTITY_INDEX[name]] = _hash_piece(name, value)
    return _hash_of_pieces(pieces)


def _hash_of_pieces(pieces: list[str]) -> str:
    return hashlib.sha256(("{" + ", ".join(filter(None, pieces)) + "}").encode()).hexdigest()[:8]


def _hash_piece(name: str, value: Any) -> str:
    """The `"name": value` of the hashed JSON text ("" for a later field at its default), cached:
    the runs of a grid share most values. repr keeps -0.0 apart from 0.0, the class True from 1."""
    cache_key = (name, value.__class__, repr(value) if value.__class__ is float else value)
    piece = _HASH_PIECES.get(cache_key)
    if piece is None:
        plain = value.value if isinstance(value, enum.Enum) else value
        skip = name in LATER_FIELDS and plain == FIELD_DEFAULTS[name]
        piece = _HASH_PIECES[cache_key] = "" if skip else f"{json.dumps(name)}: {json.dumps(plain)}"
    return piece


_HASH_PIECES: dict[tuple, str] = {}
_IDENTITY_FIELDS = tuple(sorted(name for name in FIELD_DEFAULTS if name not in RESUME_NEUTRAL_FIELDS))
_IDENTITY_INDEX = {name: index for index, name in enumerate(_IDENTITY_FIELDS)}
_DEFAULT_PIECES = tuple(_hash_piece(name, getattr(TrainConfig(), name)) for name in _IDENTITY_FIELDS)
