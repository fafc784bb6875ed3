"""Exact resume: a run stopped anywhere and restarted ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from helpers import NoteTaker, assert_same_run, interrupt_at
from ptbjobs.cli import main
from ptbjobs.core import states
from ptbjobs.core.errors import PtbjobsError
from ptbjobs.train import checkpoint
from ptbjobs.train.run_dir import RunDir
from ptbjobs.train.runner import run_training
from ptbjobs.train.signals import TrainingInterrupted


@pytest.fixture
def reference_run(tmp_path, tiny_corpus, tiny_config) -> Path:
    out = tmp_path / "uninterrupted"
    run_training(tiny_config, out, tiny_corpus, handle_signals=False)
    return out


@pytest.mark.parametrize("stop_step", [7, 1], ids=["mid-epoch", "first-step"])
def test_a_run_stopped_mid_epoch_resumes_to_identical_metrics_and_weights(
        tmp_path, tiny_corpus, tiny_config, reference_run, monkeypatch, stop_step):
    out = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_at(patch, stop_step)
        with pytest.raises(TrainingInterrupted):
            run_training(tiny_config, out, tiny_corpus, handle_signals=False)
    assert RunDir(out).read_state()["state"] == states.INTERRUPTED
    run_training(tiny_config, out, tiny_corpus, handle_signals=False)
    assert RunDir(out).read_state()["state"] == states.COMPLETED
    assert_same_run(reference_run, out)


def test_a_run_stopped_on_the_last_step_of_an_epoch_resumes_to_identical_results(
        tmp_path, tiny_corpus, tiny_config, reference_run, monkeypatch):
    steps_per_epoch = RunDir(reference_run).read_metrics()[0]["steps"]
    out = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_at(patch, steps_per_epoch)
        with pytest.raises(TrainingInterrupted):
            run_training(tiny_config, out, tiny_corpus, handle_signals=False)
    assert RunDir(out).read_metrics() == []  # stopped before the epoch's evaluation
    run_training(tiny_config, out, tiny_corpus, handle_signals=False)
    assert_same_run(reference_run, out)


def test_a_crash_just_after_the_epoch_end_checkpoint_resumes_to_identical_results(
        tmp_path, tiny_corpus, tiny_config, reference_run, monkeypatch):
    out = tmp_path / "crashed"
    with monkeypatch.context() as patch:
        def crash(self, records):
            raise RuntimeError("power cut")

        patch.setattr(RunDir, "write_metrics", crash)
        with pytest.raises(RuntimeError, match="power cut"):
            run_training(tiny_config, out, tiny_corpus, handle_signals=False)
    assert RunDir(out).read_state()["state"] == states.FAILED
    saved = checkpoint.load_latest(out / "checkpoints")[0]
    assert (saved["epoch"], saved["chunk"]) == (1, 0)  # the state at the boundary was on disk
    run_training(tiny_config, out, tiny_corpus, handle_signals=False)
    assert_same_run(reference_run, out)


@pytest.mark.parametrize("extra", [{}, {"recurrent_dropout": 0.25}, {"word_dropout": 0.2, "weight_decay": 1e-3}],
                         ids=["", "recurrent", "word-dropout-weight-decay"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_exact_resume_holds_for_variational_dropout_with_tied_weights(tmp_path, tiny_corpus, tiny_config, monkeypatch, cell,
                                                                      extra):
    config = tiny_config.replace(cell=cell, variational_dropout=True, tie_weights=True, dropout=0.3, **extra)
    reference = tmp_path / "reference"
    run_training(config, reference, tiny_corpus, handle_signals=False)
    out = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_at(patch, 150)  # in epoch 2
        with pytest.raises(TrainingInterrupted):
            run_training(config, out, tiny_corpus, handle_signals=False)
    run_training(config, out, tiny_corpus, handle_signals=False)
    assert_same_run(reference, out)


@pytest.mark.parametrize("stop_step", [20, 21], ids=["mid-epoch", "at-the-last-epoch-end"])
def test_a_max_steps_run_stopped_at_its_last_steps_resumes_to_identical_results(
        tmp_path, tiny_corpus, tiny_config, monkeypatch, stop_step):
    steps_per_epoch = 7
    config = tiny_config.replace(epoch_steps=steps_per_epoch, max_steps=stop_step)
    reference = tmp_path / "reference"
    run_training(config, reference, tiny_corpus, handle_signals=False)
    out = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_at(patch, stop_step)
        with pytest.raises(TrainingInterrupted):
            run_training(config, out, tiny_corpus, handle_signals=False)
    run_training(config, out, tiny_corpus, handle_signals=False)
    assert_same_run(reference, out)
    assert len(RunDir(out).read_metrics()) == 4  # 3 epochs (the last one short) and the final record


def test_a_checkpoint_written_before_a_later_field_existed_resumes_as_its_default(tmp_path, tiny_corpus, tiny_config):
    from ptbjobs.core.errors import CheckpointError
    from ptbjobs.train.corpus import load_corpus
    from ptbjobs.train.trainer import Trainer

    corpus = load_corpus(tiny_corpus)
    trainer = Trainer(tiny_config, corpus, RunDir(tmp_path / "a"))
    trainer.run_steps(3)
    state = trainer.state_dict()
    del state["config"]["recurrent_dropout"]
    resumed = Trainer(tiny_config, corpus, RunDir(tmp_path / "b"))
    resumed.load_state(state)
    assert resumed.global_step == 3
    with pytest.raises(CheckpointError, match="recurrent_dropout"):
        Trainer(tiny_config.replace(recurrent_dropout=0.25), corpus, RunDir(tmp_path / "c")).load_state(state)


@pytest.fixture
def deferred_stop_signals():
    """This process as a job process is (signals.defer_stop_signals), put back afterwards."""
    import signal

    from ptbjobs.train import signals

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR2, signal.SIGTERM)}
    signals.defer_stop_signals()
    yield signals.pending_stop_signals
    signals.pending_stop_signals.clear()
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_stop_signal_that_came_while_the_job_started_stops_it_before_a_step(tmp_path, tiny_corpus, tiny_config,
                                                                              reference_run, monkeypatch,
                                                                              deferred_stop_signals):
    import os
    import signal

    # a new run, signalled while torch loads: remembered (not raised, which could be swallowed),
    # then it stops before anything is written
    os.kill(os.getpid(), signal.SIGUSR2)
    assert deferred_stop_signals == [signal.SIGUSR2]
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        run_training(tiny_config, out, tiny_corpus)
    assert stopped.value.signals == (signal.SIGUSR2,)  # as if received in training: Slurm requeues on it
    assert stopped.value.exit_code == 75 and deferred_stop_signals == []
    assert not (out / "state.json").exists()
    # a run part-way through, signalled while it loads its checkpoint: it stops before its next step
    interrupt_at(monkeypatch, 7)
    with pytest.raises(TrainingInterrupted):
        run_training(tiny_config, out, tiny_corpus, handle_signals=False)
    monkeypatch.undo()
    load_latest = checkpoint.load_latest

    def load_while_signalled(folder):
        os.kill(os.getpid(), signal.SIGTERM)
        return load_latest(folder)

    monkeypatch.setattr(checkpoint, "load_latest", load_while_signalled)
    with pytest.raises(TrainingInterrupted) as stopped:
        run_training(tiny_config, out, tiny_corpus)
    monkeypatch.undo()
    assert stopped.value.signals == (signal.SIGTERM,)
    assert RunDir(out).read_state()["state"] == "INTERRUPTED" and RunDir(out).read_state()["step"] == 7
    assert checkpoint.load_latest(out / "checkpoints")[0]["global_step"] == 7  # nothing trained, nothing saved
    run_training(tiny_config, out, tiny_corpus, handle_signals=False)  # and it resumes to the same end
    assert_same_run(reference_run, out)


@pytest.mark.parametrize("name, damage", [("config.json", "{broken"), ("state.json", "[]"),
                                          ("metrics.jsonl", '{"epoch": 1}\n{"epo')])
def test_a_run_with_a_damaged_folder_file_resumes_from_its_checkpoint_and_writes_it_anew(
        tmp_path, tiny_corpus, tiny_config, reference_run, monkeypatch, name, damage):
    steps_per_epoch = RunDir(reference_run).read_metrics()[0]["steps"]
    out = tmp_path / "damaged"
    with monkeypatch.context() as patch:
        interrupt_at(patch, steps_per_epoch + 3)
        with pytest.raises(TrainingInterrupted):
            run_training(tiny_config, out, tiny_corpus, handle_signals=False)
    (out / name).write_text(damage)  # a bad copy of the folder, a full disk, a hand edit
    run_training(tiny_config, out, tiny_corpus, handle_signals=False)
    assert_same_run(reference_run, out)
    assert RunDir(out).read_config()["train"] == tiny_config.to_dict()
    assert RunDir(out).read_state()["state"] == states.COMPLETED


def stop_at(config, out: Path, corpus: Path, monkeypatch, step: int) -> None:
    with monkeypatch.context() as patch:
        interrupt_at(patch, step)
        with pytest.raises(TrainingInterrupted):
            run_training(config, out, corpus, handle_signals=False)


def test_a_resume_on_changed_data_is_refused_with_one_line(tmp_path, tiny_corpus, tiny_config, reference_run,
                                                           monkeypatch, capsys):
    out = tmp_path / "run"
    stop_at(tiny_config, out, tiny_corpus, monkeypatch, 7)
    train_file = tiny_corpus / "ptb.train.txt"
    original = train_file.read_bytes()
    train_file.write_bytes(original + b" w1 w2 w3 \n")  # words the vocabulary has: only the sha256 can tell
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(tiny_config.to_dict()))
    command = ["train", "--config", str(config_file), "--out", str(out), "--data-dir"]

    assert main([*command, str(tiny_corpus)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"ptbjobs: error: data file {train_file} changed since this run started (sha256 ")
    assert line.endswith("(restore it, or start a new run with a new --out)")
    assert RunDir(out).read_state()["state"] == states.INTERRUPTED  # refused before any write
    assert checkpoint.load_latest(out / "checkpoints")[0]["global_step"] == 7
    # the same bytes in another folder (another node's copy) are the same data
    copy = shutil.copytree(tiny_corpus, tmp_path / "copy")
    (copy / "ptb.train.txt").write_bytes(original)
    assert main([*command, str(copy)]) == 0
    assert_same_run(reference_run, out)


def test_a_resume_with_a_best_pt_of_another_epoch_is_refused(tmp_path, tiny_corpus, tiny_config, reference_run,
                                                             monkeypatch):
    steps_per_epoch = RunDir(reference_run).read_metrics()[0]["steps"]
    out = tmp_path / "run"
    best = out / "best.pt"
    for epoch in (1, 2):  # stopped in epochs 2 and 3: best.pt holds epochs 1 and 2 (valid ppl falls)
        stop_at(tiny_config, out, tiny_corpus, monkeypatch, epoch * steps_per_epoch + 3)
        assert torch.load(best, weights_only=True)["epoch"] == epoch
        shutil.copy(best, tmp_path / f"best-{epoch}.pt")
    shutil.copy(tmp_path / "best-1.pt", best)
    refusal = (rf"^{re.escape(str(best))} holds epoch 1 \(valid ppl [\d.]+\), not the best epoch 2 "
               r"\(valid ppl [\d.]+\) of the checkpoint \(put back the best\.pt of epoch 2, "
               r"or start a new run with a new --out\)$")
    with pytest.raises(PtbjobsError, match=refusal):
        run_training(tiny_config, out, tiny_corpus, handle_signals=False)
    assert best.read_bytes() == (tmp_path / "best-1.pt").read_bytes()  # refused, not overwritten
    assert RunDir(out).read_state()["state"] == states.INTERRUPTED
    best.unlink()
    with pytest.raises(PtbjobsError, match=rf"^{re.escape(str(best))} is missing; it must hold the best epoch 2 "):
        run_training(tiny_config, out, tiny_corpus, handle_signals=False)
    # a best.pt from before it named its epoch is taken as it is
    saved = torch.load(tmp_path / "best-2.pt", weights_only=True)
    del saved["epoch"], saved["valid_ppl"]
    torch.save(saved, best)
    run_training(tiny_config, out, tiny_corpus, handle_signals=False)
    assert_same_run(reference_run, out)


def test_a_stop_between_the_epoch_end_checkpoint_and_best_pt_writes_best_pt_anew_from_the_checkpoint(
        tmp_path, tiny_corpus, tiny_config, reference_run, monkeypatch):
    from ptbjobs.train import trainer

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        def power_cut(*args):
            raise RuntimeError("power cut")

        patch.setattr(trainer, "save_weights", power_cut)
        with pytest.raises(RuntimeError, match="power cut"):
            run_training(tiny_config, out, tiny_corpus, handle_signals=False)
    saved = checkpoint.load_latest(out / "checkpoints")[0]
    assert (saved["epoch"], saved["chunk"], saved["best_epoch"]) == (1, 0, 1) and not (out / "best.pt").exists()
    reporter = NoteTaker()
    run_training(tiny_config, out, tiny_corpus, reporter=reporter, handle_signals=False)
    assert [note for note in reporter.notes if "best.pt is missing" in note and "written anew" in note]
    assert_same_run(reference_run, out)
