"""How a training run reports itself: a live rich progress bar on a terminal, plain timestamped
lines otherwise (a Slurm log, a pipe), nothing at all in tests."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from ptbjobs.core.atomic import atomic_write_bytes
from ptbjobs.train.config import TrainConfig
from ptbjobs.train.reporting import Progress
from ptbjobs.train.run_dir import PROGRESS_FILE, RunDir


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    return (f"epoch {record['epoch']}/{epochs}: lr {record['lr']:.4g}, train ppl {record['train_ppl']:.2f}, "
            f"valid ppl {record['valid_ppl']:.2f}, {record['tokens_per_s']:,.0f} tokens/s, "
            f"{_duration(record['elapsed_s'])} elapsed")


def final_line(final: dict[str, Any]) -> str:
    cut = " (cut short by max_steps)" if final.get("truncated") else ""
    return (f"done{cut}: best valid ppl {final['best_valid_ppl']:.2f} at epoch {final['best_epoch']}, "
            f"test ppl {final['test_ppl']:.2f} with those weights, {_duration(final['elapsed_s'])}")


def start_line(config: TrainConfig, run: RunDir, resumed_from: str | None) -> str:
    where = f"resuming from {resumed_from}" if resumed_from else "starting"
    return (f"{where}: {config.cell.value} {config.num_layers}x{config.hidden_size}, dropout {config.dropout:g}, "
            f"lr {config.lr:g}, {config.epochs} epochs, seed {config.seed} -> {run.path}")


class PlainReporter:
    """One line per epoch, and a progress line every `every_s` seconds within an epoch."""

    def __init__(self, stream: IO[str] | None = None, every_s: float = 60.0, prefix: str = ""):
        """`prefix` starts each line (a run's name, where a fused pack's runs share one log)."""
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.prefix = prefix
        self.epochs = 0
        self._next = 0.0

    def _say(self, text: str) -> None:
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {self.prefix}{text}", file=self.stream, flush=True)

    def start(self, config: TrainConfig, run: RunDir, resumed_from: str | None) -> None:
        self.epochs = config.epochs
        self._next = time.monotonic() + self.every_s
        self._say(start_line(config, run, resumed_from))

    def progress(self, progress: Progress) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every_s
        self._say(f"epoch {progress.epoch}/{self.epochs} step {progress.chunk}/{progress.chunks}: "
                  f"train ppl {progress.train_ppl:.2f}, {progress.tokens_per_s:,.0f} tokens/s")

    def epoch_end(self, record: dict[str, Any]) -> None:
        self._say(epoch_line(record, self.epochs))

    def finish(self, final: dict[str, Any]) -> None:
        self._say(final_line(final))

    def note(self, text: str) -> None:
        self._say(text)

    def alive(self) -> None:
        pass

    def close(self) -> None:
        pass


class RichReporter:
    """A progress bar per epoch with tokens/s and the running train perplexity; epoch results
    stay on screen above it."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self.console = Console(stderr=True)
        self.bar = Bar(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("ppl {task.fields[ppl]:>8.2f}  {task.fields[speed]:>7,.0f} tok/s  lr {task.fields[lr]:.4g}"),
                       TimeRemainingColumn(), console=self.console, transient=True)
        self.task = None
        self.epochs = 0

    def start(self, config: TrainConfig, run: RunDir, resumed_from: str | None) -> None:
        self.epochs = config.epochs
        self.console.print(start_line(config, run, resumed_from))
        self.bar.start()

    def progress(self, progress: Progress) -> None:
        fields = dict(epoch=f"{progress.epoch}/{self.epochs}", ppl=progress.train_ppl,
                      speed=progress.tokens_per_s, lr=progress.lr)
        if self.task is None:
            self.task = self.bar.add_task("train", total=progress.chunks, **fields)
        self.bar.update(self.task, completed=progress.chunk, **fields)

    def epoch_end(self, record: dict[str, Any]) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        self.console.print(epoch_line(record, self.epochs))

    def finish(self, final: dict[str, Any]) -> None:
        self.bar.stop()
        self.console.print(final_line(final))

    def note(self, text: str) -> None:
        self.console.print(text)

    def alive(self) -> None:
        pass

    def close(self) -> None:
        self.bar.stop()


class ProgressFileReporter:
    """Passes everything on to `inner`, and keeps `progress.json` in the run folder up to date
    (at most every `every_s` seconds): the heartbeat `ptbjobs status` reads for a running run."""

    def __init__(self, run_dir: Path, inner: Any, every_s: float = 5.0):
        self.path = Path(run_dir) / PROGRESS_FILE
        self.inner = inner
        self.every_s = every_s
        self._next = 0.0
        self._last: dict[str, Any] | None = None  # the last progress reported, repeated while it evaluates

    def start(self, config: TrainConfig, run: RunDir, resumed_from: str | None) -> None:
        # an earlier attempt's heartbeat would make status count the time the job waited to be
        # requeued as training time, until this attempt writes its own
        self.path.unlink(missing_ok=True)
        self.inner.start(config, run, resumed_from)

    def progress(self, progress: Progress) -> None:
        self.inner.progress(progress)
        self._last = dataclasses.asdict(progress)
        self._beat()

    def alive(self) -> None:
        """Evaluating or saving: the last progress again (if any yet), with the time of now."""
        self.inner.alive()
        self._beat()

    def _beat(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every_s
            atomic_write_bytes(self.path, json.dumps({"time": time.time(), **(self._last or {})}).encode())

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.inner.epoch_end(record)

    def finish(self, final: dict[str, Any]) -> None:
        self.inner.finish(final)

    def note(self, text: str) -> None:
        self.inner.note(text)

    def close(self) -> None:
        self.inner.close()


def make_reporter(stream: IO[str] | None = None) -> PlainReporter | RichReporter:
    stream = stream or sys.stderr
    return RichReporter() if stream.isatty() else PlainReporter(stream)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
