"""What a training run tells whoever watches it: progress, epoch ends, the end, notes. The trainer
calls a `Reporter`; the terminal, the plain log of a job and the heartbeat file are reporters
(train/progress.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ptbjobs.train.config import TrainConfig
from ptbjobs.train.run_dir import RunDir


@dataclass
class Progress:
    epoch: int  # 1-based
    chunk: int
    chunks: int
    lr: float
    train_ppl: float
    tokens_per_s: float
    elapsed_s: float  # of the whole run so far, earlier attempts included


class Reporter(Protocol):
    def start(self, config: TrainConfig, run: RunDir, resumed_from: str | None) -> None: ...
    def progress(self, progress: Progress) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...
    def finish(self, final: dict[str, Any]) -> None: ...
    def note(self, text: str) -> None: ...
    def alive(self) -> None: ...  # still at work between progress reports (evaluating, saving)
    def close(self) -> None: ...


class SilentReporter:
    def start(self, config, run, resumed_from): pass
    def progress(self, progress): pass
    def epoch_end(self, record): pass
    def finish(self, final): pass
    def note(self, text): pass
    def alive(self): pass
    def close(self): pass
