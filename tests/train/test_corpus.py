from __future__ import annotations

import math

import pytest
import torch

from ptbjobs.core.errors import DataError
from ptbjobs.train.corpus import EOS, batchify, chunk_starts, get_chunk, iter_chunks, load_corpus
from ptbjobs.train.ptb_files import resolve_data_dir


def test_batchify_cuts_the_stream_into_contiguous_columns():
    stream = torch.arange(11)
    columns = batchify(stream, 4)
    assert columns.shape == (2, 4)
    assert columns[:, 0].tolist() == [0, 1]
    assert columns[:, 3].tolist() == [6, 7]  # the 3 tokens past 4 x 2 are dropped
    assert columns.t().reshape(-1).tolist() == list(range(8))


def test_chunks_walk_the_rows_with_targets_shifted_by_one_and_a_shorter_last_chunk():
    source = batchify(torch.arange(2 * 11), 2)  # 11 rows
    starts = list(chunk_starts(source, 4))
    assert starts == [0, 4, 8]
    inputs, targets = get_chunk(source, 8, 4)
    assert inputs.shape == (2, 2)  # rows 8, 9 -> targets 9, 10
    assert torch.equal(targets, source[9:11])
    assert sum(t.numel() for _, _, t in iter_chunks(source, 4)) == 2 * 10


def test_consecutive_chunks_continue_each_column():
    source = batchify(torch.arange(100), 5)
    (_, first_in, first_target), (_, second_in, _) = list(iter_chunks(source, 3))[:2]
    # row j of the next chunk continues row j of this one: the carried state sees the right history
    assert torch.equal(second_in[0], first_target[-1])
    assert torch.equal(second_in[0], first_in[-1] + 1)


def test_resuming_the_chunk_iterator_starts_at_the_given_chunk():
    source = batchify(torch.arange(200), 4)
    all_chunks = list(iter_chunks(source, 7))
    resumed = list(iter_chunks(source, 7, first=3))
    assert [i for i, _, _ in resumed] == list(range(3, len(all_chunks)))
    assert torch.equal(resumed[0][1], all_chunks[3][1])


def test_the_vocabulary_comes_from_train_with_eos_per_line(tiny_corpus):
    corpus = load_corpus(tiny_corpus)
    assert EOS in corpus.vocab.index
    lines = (tiny_corpus / "ptb.train.txt").read_text().splitlines()
    assert corpus.train.numel() == sum(len(line.split()) + 1 for line in lines)


def test_real_ptb_has_the_published_sizes(ptb_dir):
    corpus = load_corpus(ptb_dir)
    assert len(corpus.vocab) == 10000
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (929589, 73760, 82430)
    # 929,589 tokens in 20 columns and 20-step chunks: 2,323 full chunks and one of 18
    source = batchify(corpus.train, 20)
    assert len(chunk_starts(source, 20)) == math.ceil((source.size(0) - 1) / 20) == 2324


def test_a_missing_folder_names_the_command_that_fixes_it(tmp_path):
    with pytest.raises(DataError) as caught:
        load_corpus(tmp_path / "nowhere")
    assert "does not exist" in caught.value.message
    assert "ptbjobs data download --data-dir" in caught.value.hint


def test_a_missing_file_is_named(tiny_corpus):
    (tiny_corpus / "ptb.test.txt").unlink()
    with pytest.raises(DataError, match="missing data file .*ptb.test.txt"):
        load_corpus(tiny_corpus)


def test_an_empty_file_is_refused(tiny_corpus):
    (tiny_corpus / "ptb.valid.txt").write_text("  \n")
    with pytest.raises(DataError, match="ptb.valid.txt is empty"):
        load_corpus(tiny_corpus)


def test_a_binary_file_is_refused(tiny_corpus):
    (tiny_corpus / "ptb.train.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(DataError, match="is binary"):
        load_corpus(tiny_corpus)


def test_a_held_out_word_missing_from_the_vocabulary_is_named_with_its_line(tiny_corpus):
    valid = tiny_corpus / "ptb.valid.txt"
    valid.write_text(valid.read_text() + " w1 zebra w2\n")
    line_number = len(valid.read_text().splitlines())
    with pytest.raises(DataError, match=rf"ptb.valid.txt:{line_number}: word 'zebra' is not in the training vocabulary"):
        load_corpus(tiny_corpus)


def test_the_data_folder_comes_from_the_flag_then_the_environment_then_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PTBJOBS_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("PTBJOBS_DATA")
    assert resolve_data_dir(None) == tmp_path / "cache" / "ptbjobs" / "ptb"
