from __future__ import annotations

import logging

import pytest
import torch

from ptbjobs.core.errors import CheckpointError
from ptbjobs.train import checkpoint
from ptbjobs.train.runner import run_training
from ptbjobs.train.signals import TrainingInterrupted


def state(step: int) -> dict:
    return {"step": step, "weights": torch.full((3,), float(step)), "history": [{"epoch": 1, "ppl": 2.5}]}


def test_a_checkpoint_round_trips_and_loads_with_weights_only(tmp_path):
    checkpoint.save(tmp_path, 5, state(5))
    loaded, path = checkpoint.load_latest(tmp_path)
    assert path.name == "ckpt-000000005.pt"
    assert loaded["step"] == 5 and torch.equal(loaded["weights"], torch.full((3,), 5.0))


def test_only_the_newest_two_are_kept(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, state(step))
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt-000000002.pt", "ckpt-000000003.pt"]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage, problem", [
    (lambda blob: blob[: len(blob) // 2], "truncated"),
    (lambda blob: blob[:-10] + bytes(10), "sha256 mismatch"),
    (lambda blob: b"garbage" + blob, "bad header"),
    (lambda blob: b"", "bad header"),
    (lambda blob: blob.replace(b" ", b" x", 3), "bad header"),
])
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog, damage, problem):
    checkpoint.save(tmp_path, 1, state(1))
    newest = checkpoint.save(tmp_path, 2, state(2))
    newest.write_bytes(damage(newest.read_bytes()))
    with caplog.at_level(logging.WARNING):
        loaded, path = checkpoint.load_latest(tmp_path)
    assert loaded["step"] == 1
    assert problem in caplog.text and newest.name in caplog.text


def test_when_every_checkpoint_is_damaged_the_error_says_what_is_wrong_with_each(tmp_path):
    for step in (1, 2):
        path = checkpoint.save(tmp_path, step, state(step))
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load_latest(tmp_path)
    assert caught.value.message.count("truncated") == 2
    assert "delete the run folder's checkpoints/" in caught.value.hint


def test_a_checkpoint_holding_code_is_refused(tmp_path):
    class Sneaky:
        def __reduce__(self):
            return (print, ("this must never run",))

    blob = checkpoint.encode({"x": Sneaky()})
    with pytest.raises(CheckpointError, match="unreadable payload"):
        checkpoint.decode(blob)


def test_a_run_resumes_from_the_previous_checkpoint_when_the_newest_is_corrupt(
        tmp_path, tiny_corpus, tiny_config, caplog, monkeypatch):
    from helpers import interrupt_at

    reference = run_training(tiny_config, tmp_path / "ref", tiny_corpus, handle_signals=False)
    config = tiny_config.replace(checkpoint_every_steps=10)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 35)
        with pytest.raises(TrainingInterrupted):
            run_training(config, tmp_path / "run", tiny_corpus, handle_signals=False)
    # the run stopped at step 35 (checkpoints at 30 and 35); damage the newest and resume
    newest = checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    assert newest.name == "ckpt-000000035.pt"
    newest.write_bytes(newest.read_bytes()[:-1])
    with caplog.at_level(logging.WARNING):
        final = run_training(config, tmp_path / "run", tiny_corpus, handle_signals=False)
    assert "truncated" in caplog.text
    assert final["test_ppl"] == reference["test_ppl"]


def test_a_checkpoint_of_another_config_is_refused(tmp_path, tiny_corpus, tiny_config, monkeypatch):
    from helpers import interrupt_at

    with monkeypatch.context() as patch:
        interrupt_at(patch, 5)
        with pytest.raises(TrainingInterrupted):
            run_training(tiny_config, tmp_path / "run", tiny_corpus, handle_signals=False)
    (tmp_path / "run" / "config.json").unlink()  # so the folder check cannot catch it first
    with pytest.raises(CheckpointError, match=r"another config \(lr\)"):
        run_training(tiny_config.replace(lr=0.3), tmp_path / "run", tiny_corpus, handle_signals=False)
