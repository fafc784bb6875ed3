"""Shared fixtures: a tiny synthetic corpus (fast, exact), the real PTB folder (skipped if absent),
and a tiny training config that runs in well under a second an epoch."""

from __future__ import annotations

import functools
import http.server
import os
import random
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from ptbjobs.train.config import TrainConfig
from ptbjobs.train.ptb_download import ARCHIVE_MEMBER_PREFIX
from ptbjobs.train.ptb_files import default_data_dir

SPLITS = ("train", "valid", "test")

REPO = Path(__file__).resolve().parent.parent


def real_ptb_dir() -> Path | None:
    # the folder named for tests, the shared one beside the checkout, then where ptbjobs itself
    # looks ($PTBJOBS_DATA, and the cache that `ptbjobs data download` fills)
    candidates = [os.environ.get("PTBJOBS_TEST_DATA"), REPO.parent / "shared" / "data" / "ptb",
                  os.environ.get("PTBJOBS_DATA"), default_data_dir()]
    for candidate in candidates:
        if candidate and (Path(candidate) / "ptb.train.txt").is_file():
            return Path(candidate)
    return None


@pytest.fixture
def ptb_dir() -> Path:
    found = real_ptb_dir()
    if found is None:
        if os.environ.get("CI"):  # CI must exercise the real data, never skip past it
            pytest.fail("the real PTB files are in none of $PTBJOBS_TEST_DATA, ../shared/data/ptb, $PTBJOBS_DATA, "
                        f"{default_data_dir()}")
        pytest.skip("the real PTB files are not here (set PTBJOBS_TEST_DATA)")
    return found


def write_corpus(folder: Path, seed: int = 0, vocab: int = 30, lines: tuple[int, int, int] = (300, 40, 40)) -> Path:
    """A small corpus with some structure to learn: each word tends to be followed by the next."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "valid", "test"), lines):
        out = []
        for _ in range(count):
            start = rng.randrange(vocab)
            out.append(" " + " ".join(words[(start + k + rng.randrange(2)) % vocab] for k in range(rng.randint(3, 12))) + " ")
        (folder / f"ptb.{split}.txt").write_text("\n".join(out) + "\n")
    return folder


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "data")


# tiny_config's model, as the [defaults] lines of a test grid
TINY_MODEL_TOML = """emb_size = 16
hidden_size = 16
batch_size = 4
bptt = 5
eval_batch_size = 3
"""


# a search over four lrs of tiny_config's model, as the tests of searches run it on either executor,
# one run at a time in this order: lr 50 is hopeless; of the others lr 0.5 learns fastest, then 1,
# then 2 (tests/executors/test_search_runs.py works the verdicts by hand)
TINY_SEARCH_TOML = """[search]
rungs = [1, 2]
keep = 0.5
[axes]
cell = ["lstm"]
lr = [0.5, 50.0, 2.0, 1.0]
"""


@pytest.fixture
def tiny_config() -> TrainConfig:
    return TrainConfig(emb_size=16, hidden_size=16, batch_size=4, bptt=5, eval_batch_size=3, epochs=3,
                       decay_after=1, device="cpu", checkpoint_every_min=0, dropout=0.2)


@pytest.fixture
def served(tmp_path, ptb_dir):
    """A loopback HTTP server over a folder: good/ holds the real files, bad/ a corrupted train
    file, and ptb.tgz an archive laid out like Mikolov's simple-examples.tgz."""
    root = tmp_path / "www"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    for split in SPLITS:
        shutil.copy(ptb_dir / f"ptb.{split}.txt", root / "good")
        shutil.copy(ptb_dir / f"ptb.{split}.txt", root / "bad")
    corrupted = bytearray((root / "bad" / "ptb.train.txt").read_bytes())
    corrupted[1000] ^= 0x20  # one flipped bit: same size, different word
    (root / "bad" / "ptb.train.txt").write_bytes(bytes(corrupted))
    with tarfile.open(root / "ptb.tgz", "w:gz") as tar:
        for split in SPLITS:
            tar.add(ptb_dir / f"ptb.{split}.txt", arcname=ARCHIVE_MEMBER_PREFIX + f"ptb.{split}.txt")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
