"""The download path against a real HTTP server on loopback serving the real PTB files."""

from __future__ import annotations

import shutil

import pytest

from ptbjobs.core.errors import DataError
from ptbjobs.train.ptb_download import download, verify_folder

SPLITS = ("train", "valid", "test")


def test_download_fetches_and_verifies_all_three_files(tmp_path, served):
    dest = tmp_path / "ptb"
    written = download(dest, (served + "/good/",))
    assert sorted(p.name for p in written) == ["ptb.test.txt", "ptb.train.txt", "ptb.valid.txt"]
    assert all(check.ok for check in verify_folder(dest))
    assert not list(dest.glob(".*tmp"))  # no temp files left behind
    assert download(dest, (served + "/good/",)) == []  # already there: nothing fetched


def test_a_corrupted_file_is_rejected_and_the_next_source_used(tmp_path, served):
    dest = tmp_path / "ptb"
    notes = []
    written = download(dest, (served + "/bad/", served + "/good/"), log=notes.append)
    assert any("ptb.train.txt: sha256 mismatch" in note for note in notes)
    assert all(check.ok for check in verify_folder(dest))
    assert len(written) == 3


def test_a_corrupted_file_with_no_other_source_fails_and_is_not_written(tmp_path, served):
    dest = tmp_path / "ptb"
    with pytest.raises(DataError, match=r"could not download ptb.train.txt: .*sha256 mismatch"):
        download(dest, (served + "/bad/",))
    assert not (dest / "ptb.train.txt").exists()
    assert (dest / "ptb.valid.txt").exists()  # the good ones are kept


def test_the_archive_source_is_unpacked(tmp_path, served):
    dest = tmp_path / "ptb"
    notes = []
    download(dest, (served + "/missing/", served + "/ptb.tgz"), log=notes.append)
    assert any("HTTP 404" in note for note in notes)
    assert all(check.ok for check in verify_folder(dest))


def test_an_unreachable_source_is_reported(tmp_path):
    with pytest.raises(DataError, match="unreachable"):
        download(tmp_path / "ptb", ("http://127.0.0.1:9/",), timeout_s=2)


def test_verify_names_the_wrong_file(tmp_path, ptb_dir):
    for split in SPLITS:
        shutil.copy(ptb_dir / f"ptb.{split}.txt", tmp_path)
    with open(tmp_path / "ptb.valid.txt", "a") as handle:
        handle.write(" extra words \n")
    problems = {check.split: check.problem for check in verify_folder(tmp_path) if not check.ok}
    assert list(problems) == ["valid"] and "is not the canonical" in problems["valid"]
