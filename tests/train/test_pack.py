"""Fused packs of real run folders: each run ends as its solo run does (to float tolerance), in
the solo files; a pack stopped by a signal or killed with SIGKILL resumes bit for bit; a run leaves
the pack when it ends or diverges; a run trained fused resumes solo."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import assert_same_run, comparable
from ptbjobs.core import states
from ptbjobs.core.errors import DivergedError
from ptbjobs.executors.job import write_spec
from ptbjobs.train import checkpoint
from ptbjobs.train.fused_cpu import SEGMENT_STEPS, FusedStep
from ptbjobs.train.pack_runner import run_pack
from ptbjobs.train.reporting import SilentReporter
from ptbjobs.train.run_dir import RunDir
from ptbjobs.train.runner import run_training
from ptbjobs.train.signals import TrainingInterrupted


def _configs(tiny_config):
    """Three runs of one shape that differ in seed, lr, dropout and epochs."""
    return [dataclasses.replace(tiny_config, seed=1, dropout=0.0, epochs=2),
            dataclasses.replace(tiny_config, seed=2, dropout=0.2, lr=0.7, epochs=3),
            dataclasses.replace(tiny_config, seed=3, dropout=0.0, lr=1.2, weight_decay=1e-3, epochs=3)]


def _pack(configs, folder, data, **kwargs):
    return run_pack([(c, folder / f"r{i}", SilentReporter()) for i, c in enumerate(configs)], data, **kwargs)


@contextlib.contextmanager
def _sigterm_at(monkeypatch, at_step: int, stopped_after: list[int]):
    """SIGTERM to this process right after the pack's step `at_step`: the real signal handler
    asks the pack to stop at the next step boundary it looks at (its segment's end, appended to
    `stopped_after`)."""
    real_steps = FusedStep.train_steps

    def steps_then_signal(self, chunks, hidden, lrs):
        result = real_steps(self, chunks, hidden, lrs)
        if any(step == at_step for _, _, step, _ in chunks):
            stopped_after.append(chunks[-1][2])
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(FusedStep, "train_steps", steps_then_signal)
    try:
        yield
    finally:
        monkeypatch.setattr(FusedStep, "train_steps", real_steps)


def test_each_run_of_a_pack_ends_as_its_solo_run_does(tmp_path, tiny_corpus, tiny_config):
    configs = _configs(tiny_config)
    outcomes = _pack(configs, tmp_path / "pack", tiny_corpus)
    assert len(outcomes) == 3 and not any(isinstance(o, BaseException) for o in outcomes.values())
    for index, config in enumerate(configs):
        fused, solo = RunDir(tmp_path / "pack" / f"r{index}"), RunDir(tmp_path / "solo" / f"r{index}")
        run_training(config, solo.path, tiny_corpus, handle_signals=False)
        assert fused.read_state()["state"] == states.COMPLETED
        fused_metrics, solo_metrics = fused.read_metrics(), solo.read_metrics()
        assert len(fused_metrics) == config.epochs + 1  # it left the pack at its own last epoch
        if config.dropout == 0.0:  # with dropout the streams differ (the solo run draws from torch's)
            for a, b in zip(fused_metrics[:-1], solo_metrics[:-1]):
                assert a["valid_ppl"] == pytest.approx(b["valid_ppl"], rel=1e-3)
            assert fused_metrics[-1]["test_ppl"] == pytest.approx(solo_metrics[-1]["test_ppl"], rel=1e-3)
        assert fused_metrics[-1]["best_epoch"] >= 1 and (fused.path / "best.pt").exists()


def test_a_pack_stopped_by_a_signal_resumes_bit_for_bit(tmp_path, tiny_corpus, tiny_config, monkeypatch):
    configs = _configs(tiny_config)
    _pack(configs, tmp_path / "whole", tiny_corpus)
    stopped_after: list[int] = []
    with _sigterm_at(monkeypatch, 150, stopped_after):  # mid-epoch 2 (125 steps an epoch)
        with pytest.raises(TrainingInterrupted):
            _pack(configs, tmp_path / "stopped", tiny_corpus)
    assert 150 <= stopped_after[0] < 150 + SEGMENT_STEPS
    for index in range(3):
        run = RunDir(tmp_path / "stopped" / f"r{index}")
        assert run.read_state()["state"] == states.INTERRUPTED
        # every run saved at one step: the end of the segment the signal came in
        assert checkpoint.load_latest(run.checkpoint_dir)[0]["global_step"] == stopped_after[0] + 1
    _pack(configs, tmp_path / "stopped", tiny_corpus)
    for index in range(3):
        assert_same_run(tmp_path / "whole" / f"r{index}", tmp_path / "stopped" / f"r{index}")


def test_a_pack_killed_with_sigkill_resumes_bit_for_bit(tmp_path, tiny_corpus, tiny_config):
    configs = [dataclasses.replace(c, checkpoint_every_steps=20) for c in _configs(tiny_config)]
    _pack(configs, tmp_path / "whole", tiny_corpus)
    folders = [tmp_path / "killed" / f"r{i}" for i in range(3)]
    for folder, config in zip(folders, configs):
        write_spec(folder, config, tiny_corpus)
    command = [sys.executable, "-m", "ptbjobs.executors.job", *map(str, folders)]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not all(len(checkpoint.list_checkpoints(f / "checkpoints")) >= 2 for f in folders):
        assert job.poll() is None and time.monotonic() < deadline, "the pack ended before it was killed"
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert subprocess.run(command, capture_output=True).returncode == 0
    for index, folder in enumerate(folders):
        assert_same_run(tmp_path / "whole" / f"r{index}", folder)


def test_a_run_that_diverges_leaves_the_pack_and_the_others_go_on(tmp_path, tiny_corpus, tiny_config):
    configs = _configs(tiny_config)
    configs[1] = dataclasses.replace(configs[1], lr=1e6, clip=0.0)  # NaN within a few steps
    outcomes = _pack(configs, tmp_path / "pack", tiny_corpus)
    assert isinstance(outcomes[str(tmp_path / "pack" / "r1")], DivergedError)
    assert RunDir(tmp_path / "pack" / "r1").read_state()["state"] == states.DIVERGED
    alone = _pack([configs[0], configs[2]], tmp_path / "without", tiny_corpus)
    assert not any(isinstance(o, BaseException) for o in alone.values())
    for mine, theirs in (("r0", "r0"), ("r2", "r1")):  # the others: as if it had never been there
        a = comparable(RunDir(tmp_path / "pack" / mine).read_metrics())
        b = comparable(RunDir(tmp_path / "without" / theirs).read_metrics())
        assert [r.get("valid_ppl", r.get("test_ppl")) for r in a] == pytest.approx(
            [r.get("valid_ppl", r.get("test_ppl")) for r in b], rel=1e-5)


def test_a_run_trained_fused_resumes_solo(tmp_path, tiny_corpus, tiny_config, monkeypatch):
    configs = _configs(tiny_config)
    _pack(configs, tmp_path / "whole", tiny_corpus)
    with _sigterm_at(monkeypatch, 200, []):
        with pytest.raises(TrainingInterrupted):
            _pack(configs, tmp_path / "stopped", tiny_corpus)
    run_training(configs[2], tmp_path / "stopped" / "r2", tiny_corpus, handle_signals=False)  # no dropout: close
    whole, solo = RunDir(tmp_path / "whole" / "r2").read_metrics(), RunDir(tmp_path / "stopped" / "r2").read_metrics()
    assert len(solo) == len(whole) == configs[2].epochs + 1
    assert [r.get("valid_ppl", r.get("test_ppl")) for r in solo] == pytest.approx(
        [r.get("valid_ppl", r.get("test_ppl")) for r in whole], rel=1e-3)
