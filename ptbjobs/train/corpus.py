"""Penn Treebank (Mikolov's word-level files): reading, the vocabulary, and batching. (Where the
files are and what they must be: ptb_files.py, without torch.)

The training stream is cut into `batch_size` contiguous columns and walked in `bptt`-long chunks,
so that row j of one chunk continues row j of the previous one and the hidden state can be carried
across chunks (a shuffled DataLoader over chunks would break exactly that).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ptbjobs.core.errors import DataError
from ptbjobs.train.ptb_files import missing_data_hint, resolve_data_dir, split_filename

EOS = "<eos>"

class Vocabulary:
    """Word <-> index, in order of first appearance in the training split."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.words: list[str] = []

    def add(self, word: str) -> int:
        if word not in self.index:
            self.index[word] = len(self.words)
            self.words.append(word)
        return self.index[word]

    def __len__(self) -> int:
        return len(self.words)


@dataclass
class Corpus:
    """The three splits as 1-D LongTensors of word ids, and the training vocabulary."""

    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    data_dir: Path

    def split(self, name: str) -> torch.Tensor:
        return getattr(self, name)


def read_lines(path: Path) -> list[str]:
    """The file's lines as text, refusing what is clearly not a word-level corpus."""
    if not path.is_file():
        raise DataError(f"missing data file {path}", missing_data_hint(path.parent))
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"data file {path} is empty", missing_data_hint(path.parent))
    if b"\x00" in raw[:65536]:
        raise DataError(f"data file {path} is binary, not text", missing_data_hint(path.parent))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"data file {path} is not UTF-8 text (byte {exc.start})",
                        missing_data_hint(path.parent)) from None
    return text.splitlines()


def tokenize(lines: list[str]) -> list[str]:
    """Whitespace-separated words, with `<eos>` closing every line (as Mikolov and Zaremba do)."""
    tokens: list[str] = []
    for line in lines:
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


def load_corpus(data_dir: Path | str | None = None) -> Corpus:
    """Read the three splits; the vocabulary comes from train, and every valid/test word must be
    in it (PTB's preprocessing already mapped rare words to <unk>)."""
    folder = resolve_data_dir(data_dir)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist", missing_data_hint(folder))
    vocab = Vocabulary()
    train_words = tokenize(read_lines(folder / split_filename("train")))
    train = torch.tensor([vocab.add(word) for word in train_words], dtype=torch.long)
    held_out = {}
    for split in ("valid", "test"):
        path = folder / split_filename(split)
        held_out[split] = _encode_known(path, read_lines(path), vocab)
    return Corpus(vocab=vocab, train=train, valid=held_out["valid"], test=held_out["test"],
                  data_dir=folder)


def _encode_known(path: Path, lines: list[str], vocab: Vocabulary) -> torch.Tensor:
    ids: list[int] = []
    for line_number, line in enumerate(lines, start=1):
        for word in line.split() + [EOS]:
            if word not in vocab.index:
                raise DataError(
                    f"{path}:{line_number}: word {word!r} is not in the training vocabulary",
                    "valid and test must use the train split's vocabulary (map rare words to <unk>)",
                )
            ids.append(vocab.index[word])
    return torch.tensor(ids, dtype=torch.long)


def batchify(stream: torch.Tensor, columns: int) -> torch.Tensor:
    """Cut a 1-D token stream into `columns` contiguous pieces, one per column.

    The stream a b c d e f g h i j k in 4 columns keeps 4 x 2 tokens (i j k are dropped):

        a c e g     each column is a contiguous piece of the stream, read top to bottom;
        b d f h     rows are time steps, so a column's state carries from one row to the next
    Returns a (tokens_per_column, columns) tensor.
    """
    per_column = stream.numel() // columns
    if per_column < 2:
        raise DataError(
            f"a stream of {stream.numel()} tokens is too short for {columns} columns",
            "use a smaller batch size or a larger corpus",
        )
    return stream[: per_column * columns].view(columns, per_column).t().contiguous()


def chunk_starts(source: torch.Tensor, bptt: int) -> range:
    """Start rows of the bptt chunks of a batchified stream; the last chunk may be shorter."""
    return range(0, source.size(0) - 1, bptt)


def get_chunk(source: torch.Tensor, start: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs rows [start, start+n) and targets shifted by one, n = min(bptt, rows left - 1).

        inputs   a c e g      targets  b d f h
                 b d f h               ...
    Both (n, columns).
    """
    length = min(bptt, source.size(0) - 1 - start)
    return source[start : start + length], source[start + 1 : start + 1 + length]


def iter_chunks(source: torch.Tensor, bptt: int, first: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(chunk index, inputs, targets) from chunk `first` on: resuming mid-epoch starts there."""
    for index, start in enumerate(chunk_starts(source, bptt)):
        if index >= first:
            inputs, targets = get_chunk(source, start, bptt)
            yield index, inputs, targets
