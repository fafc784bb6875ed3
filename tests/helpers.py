"""Helpers several test modules share: comparing two runs exactly, stopping a trainer at a step,
waiting for a sweep's runs to end, and a reporter that keeps a run's notes."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ptbjobs.core import states
from ptbjobs.launch.status import collect
from ptbjobs.sweep.folder import Sweep
from ptbjobs.train import checkpoint
from ptbjobs.train.reporting import SilentReporter
from ptbjobs.train.run_dir import RunDir

TIMING_KEYS = {"tokens_per_s", "elapsed_s"}


def comparable(records: list[dict]) -> list[dict]:
    """Metrics records without the wall-clock fields, which no two runs share."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def assert_same_run(a: Path, b: Path) -> None:
    assert comparable(RunDir(a).read_metrics()) == comparable(RunDir(b).read_metrics())
    weights_a = torch.load(a / "best.pt", weights_only=True)["model"]
    weights_b = torch.load(b / "best.pt", weights_only=True)["model"]
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    last_a = checkpoint.load_latest(a / "checkpoints")[0]["model"]
    last_b = checkpoint.load_latest(b / "checkpoints")[0]["model"]
    for name in last_a:
        assert torch.equal(last_a[name], last_b[name]), name


def interrupt_at(monkeypatch, step: int) -> None:
    """Make the trainer ask to stop (as a signal would) once it reaches `step`."""
    from ptbjobs.train import trainer

    original = trainer.Trainer._step

    def step_then_maybe_stop(self, *args):
        original(self, *args)
        if self.global_step + 1 == step:
            self.request_checkpoint(stop=True)

    monkeypatch.setattr(trainer.Trainer, "_step", step_then_maybe_stop)


def wait_until(predicate, timeout_s: float = 120.0, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError("timed out waiting")


def all_ended(sweep: Sweep) -> dict:
    status = collect(sweep)
    return status if all(states.is_finished(r["state"]) for r in status["runs"]) else None


class NoteTaker(SilentReporter):
    """A reporter that keeps the notes a run makes (a damaged file, a leftover temp file)."""

    def __init__(self):
        self.notes: list[str] = []

    def note(self, text):
        self.notes.append(text)
