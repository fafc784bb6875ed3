"""The training loop: Zaremba's SGD on PTB, with exact resume from any step.

Everything the loop depends on (weights, learning rate, RNG states, position in the epoch, the hidden
state carried between chunks, the running loss, the best-so-far and the metrics history) is in the
checkpoint, so a run stopped at any moment and started again continues bit for bit (on CPU).
Per-step work stays on the device: losses are summed there and read back only at progress polls,
epoch ends and checkpoints.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F

from ptbjobs.core.errors import CheckpointError, ConfigError, DivergedError
from ptbjobs.core.memory import keep_freed_memory
from ptbjobs.train import checkpoint
from ptbjobs.train.checkpoint import load_weights, own_tensors, save_weights
from ptbjobs.train.config import RESUME_NEUTRAL_FIELDS, Schedule, TrainConfig, saved_config
from ptbjobs.train.corpus import Corpus, batchify, chunk_starts, iter_chunks
from ptbjobs.train.graph_step import StaticStep
from ptbjobs.train.model import RNNLM, Hidden, detach
from ptbjobs.train.reporting import Progress, Reporter, SilentReporter
from ptbjobs.train.run_dir import RunDir
from ptbjobs.train.signals import TrainingInterrupted

CHECKPOINT_FORMAT = 1
POLL_INTERVAL_S = 1.0  # how often the loop reads the loss back (progress, divergence check)
ALIVE_EVERY_CHUNKS = 20  # how often evaluation tells the reporter it is still at work


class RungJudge(Protocol):
    """A search's judge of a run at its rungs (executors/rungs.py)."""

    def __call__(self, epoch: int, record: dict[str, Any]) -> bool:
        """After `epoch` epochs, whose record is `record`: go on (True), or pause here."""

    def diverged(self, epochs_done: int) -> None:
        """The run diverged after `epochs_done` epochs: it counts at its next rung, as the worst."""


class RunPruned(Exception):
    """A search's judge paused the run at a rung (after writing its PRUNED state): not an error."""

    def __init__(self, epoch: int, record: dict[str, Any]):
        super().__init__(f"paused by the search at epoch {epoch}")
        self.epoch, self.record = epoch, record


def resolve_device(name: str) -> torch.device:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ConfigError(None, f"--device: must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(None, f"--device {name}: no CUDA device is visible", "use --device cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:  # torch.cuda.set_device needs the index
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def step_schedule_lr(config: TrainConfig, epoch_index: int) -> float:
    """lr of the 0-based epoch under the step schedule: held for `decay_after` epochs, then
    multiplied by `lr_decay` once per epoch (Zaremba small: 1, 1, 1, 1, 0.5, 0.25, ...)."""
    return config.lr * config.lr_decay ** max(0, epoch_index + 1 - config.decay_after)


@torch.no_grad()
def perplexity(model: RNNLM, source: torch.Tensor, bptt: int, alive: Callable[[], None] | None = None) -> float:
    """exp(total NLL / total tokens) over a batchified stream, hidden state carried from a fresh
    start; a short last chunk counts by its length, as every token does. `alive` is called every
    few chunks (a run's heartbeat goes on while it evaluates)."""
    was_training = model.training
    model.eval()
    hidden = model.init_hidden(source.size(1))
    total_nll = torch.zeros((), dtype=torch.float64, device=source.device)
    tokens = 0
    for index, inputs, targets in iter_chunks(source, bptt):
        if alive is not None and index % ALIVE_EVERY_CHUNKS == 0:
            alive()
        logits, hidden = model(inputs, hidden)
        total_nll += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").double()
        tokens += targets.numel()
    model.train(was_training)
    return exp_or_inf(total_nll.item() / tokens)


def exp_or_inf(nll_per_token: float) -> float:
    """Perplexity from the mean NLL; inf (not an OverflowError) for a diverged model."""
    return math.exp(nll_per_token) if nll_per_token < 709.0 else math.inf


class Trainer:
    """One run's model, optimiser and position. `fit()` trains to the end from wherever the
    state is; `load_state`/`state_dict` move that state to and from a checkpoint."""

    def __init__(self, config: TrainConfig, corpus: Corpus, run: RunDir, reporter: Reporter | None = None,
                 solo_step: bool = True):
        """`solo_step=False`: no CUDA-graph step of its own (a fused pack trains this run)."""
        self.config = config
        self.run = run
        self.reporter = reporter or SilentReporter()
        self.device = resolve_device(config.device)
        self.vocab_size = len(corpus.vocab)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # streams and graphs made without a device land here
        else:
            keep_freed_memory()  # each step's large tensors reuse the last step's memory (core/memory.py)
        torch.manual_seed(config.seed)
        self.model = RNNLM(config, self.vocab_size).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                         foreach=True)
        self.train_data = batchify(corpus.train, config.batch_size).to(self.device)  # (N, B)
        self.valid_data = batchify(corpus.valid, config.eval_batch_size).to(self.device)
        self.test_data = batchify(corpus.test, config.eval_batch_size).to(self.device)
        self.chunks_per_epoch = len(chunk_starts(self.train_data, config.bptt))
        if config.epoch_steps:
            self.chunks_per_epoch = min(self.chunks_per_epoch, config.epoch_steps)
        # position and running totals (all checkpointed)
        self.epoch = 0  # epochs completed
        self.chunk = 0  # next chunk of the current epoch
        self.global_step = 0
        self.lr = config.lr if config.schedule is Schedule.PLATEAU else step_schedule_lr(config, 0)
        self.hidden: Hidden = self.model.init_hidden(config.batch_size)
        self.epoch_nll = torch.zeros((), dtype=torch.float64, device=self.device)
        self.epoch_tokens = 0
        self.epoch_train_s = 0.0
        self.elapsed_before_s = 0.0  # wall time of earlier sessions of this run
        self.best_valid_ppl = math.inf
        self.best_epoch = 0
        self.history: list[dict[str, Any]] = []
        self._session_start = time.monotonic()
        self._last_checkpoint = time.monotonic()
        self._checkpoint_requested = False
        self._stop_requested = False
        self._stop_reason = ""
        self._stop_at_step: int | None = None
        self.static_step: StaticStep | None = None
        # a search's judge (executors/rungs.py): (epochs done, that epoch's record) -> go on?
        self.rung_judge: RungJudge | None = None
        if self.device.type == "cuda" and config.cuda_graph and solo_step:
            self.use_static_step(capture=True)

    def use_static_step(self, capture: bool) -> None:
        """Train full-length chunks through a `StaticStep`: replayed as a CUDA graph if `capture`
        (the default on a GPU), else run eagerly (the same computation; for tests on CPU)."""
        self.static_step = StaticStep(self.model, self.config, self.epoch_nll, capture)

    # ---- the state in a checkpoint ----

    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "model": own_tensors(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "chunk": self.chunk,
            "global_step": self.global_step,
            "lr": self.lr,
            "hidden": [own_tensors(h.detach().cpu()) for h in self.hidden],
            "epoch_nll": self.epoch_nll.cpu(),
            "epoch_tokens": self.epoch_tokens,
            "epoch_train_s": self.epoch_train_s,
            "elapsed_s": self.elapsed_s(),
            "best_valid_ppl": self.best_valid_ppl,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "rng": rng,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        saved, current = saved_config(state["config"]), self.config.to_dict()
        changed = [k for k in current if k not in RESUME_NEUTRAL_FIELDS and saved[k] != current[k]]
        if changed:
            raise CheckpointError(f"the checkpoint was written by a run with another config ({', '.join(changed)})",
                                  "resume with the config it was written with, or start in a new folder")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.chunk, self.global_step = state["epoch"], state["chunk"], state["global_step"]
        self.lr = state["lr"]
        self.hidden = [h.to(self.device) for h in state["hidden"]]
        self.epoch_nll.copy_(state["epoch_nll"])  # in place: a captured step adds to this tensor
        self.epoch_tokens, self.epoch_train_s = state["epoch_tokens"], state["epoch_train_s"]
        self.elapsed_before_s = state["elapsed_s"]
        self.best_valid_ppl, self.best_epoch = state["best_valid_ppl"], state["best_epoch"]
        self.history = list(state["history"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        if self.static_step is not None:
            self.static_step.invalidate()
        self._session_start = time.monotonic()

    def elapsed_s(self) -> float:
        return self.elapsed_before_s + time.monotonic() - self._session_start

    def save_checkpoint(self) -> Path:
        """Write the full state now (call at a step boundary; `request_checkpoint` is the
        signal-safe way to ask for one from elsewhere)."""
        self._raise_if_diverged(self.epoch_nll.item())
        self.reporter.alive()
        path = checkpoint.save(self.run.checkpoint_dir, self.global_step, self.state_dict())
        self.reporter.alive()
        self._last_checkpoint = time.monotonic()
        return path

    def request_checkpoint(self, stop: bool = False, reason: str = "on request") -> None:
        """Ask for a checkpoint at the next step boundary, and to stop after it if `stop`.
        Only sets flags, so it is safe to call from a signal handler."""
        self._checkpoint_requested = True
        if stop and not self._stop_requested:
            self._stop_requested, self._stop_reason = True, reason

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    # ---- training ----

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, then measure test perplexity with the best weights."""
        while self.epoch < self.config.epochs:
            # max_steps ends a run at an epoch boundary only: a run stopped mid-epoch exactly at
            # max_steps must still close that epoch (evaluation, best weights) when resumed
            if self.chunk == 0 and self.steps_left() <= 0:
                return self.finish(truncated=True)
            self.judge_at_rung()
            self._train_epoch()
            self.end_epoch()
        return self.finish(truncated=False)

    def judge_at_rung(self) -> None:
        """A search's judge may pause the run between epochs (raising RunPruned), its state saved
        by the epoch's end. Asked again on resuming there: its verdict is the same, or the run
        was promoted since."""
        if self.rung_judge is not None and self.chunk == 0 and self.history:
            if not self.rung_judge(self.epoch, self.history[-1]):
                raise RunPruned(self.epoch, self.history[-1])

    def run_steps(self, steps: int) -> None:
        """Train `steps` more steps within the current epoch (or to its end), nothing else: no
        evaluation, no epoch bookkeeping. For benchmarks and tests."""
        self._stop_at_step = self.global_step + steps
        try:
            self._train_epoch()
        finally:
            self._stop_at_step = None

    def steps_left(self) -> float:
        limit = self.config.max_steps or math.inf
        if self._stop_at_step is not None:
            limit = min(limit, self._stop_at_step)
        return limit - self.global_step

    def begin_epoch(self) -> None:
        """At an epoch's first chunk the state is reset, not carried over; the step schedule sets
        the epoch's lr."""
        if self.chunk != 0:
            return
        self.hidden = self.model.init_hidden(self.config.batch_size)
        self.epoch_nll.zero_()
        self.epoch_tokens, self.epoch_train_s = 0, 0.0
        if self.config.schedule is Schedule.STEP:
            self.lr = step_schedule_lr(self.config, self.epoch)

    def _train_epoch(self) -> None:
        """Train from the current chunk to the end of the epoch, or until max_steps."""
        config = self.config
        self.begin_epoch()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        segment_start, segment_tokens = time.monotonic(), 0
        next_poll = segment_start + POLL_INTERVAL_S
        for index, inputs, targets in iter_chunks(self.train_data, config.bptt, first=self.chunk):
            if self.steps_left() <= 0 or index >= self.chunks_per_epoch:
                break
            self._step(inputs, targets, config.loss_scale.divisor(inputs))
            self.chunk, self.global_step = index + 1, self.global_step + 1
            self.epoch_tokens += targets.numel()
            segment_tokens += targets.numel()
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + POLL_INTERVAL_S
                self.report_progress(segment_tokens / max(now - segment_start, 1e-9))
            if self.checkpoint_due(now):
                # a new segment starts after the save, so the rate shown next counts only its own
                # tokens (and the epoch's train time leaves the save out)
                self.epoch_train_s += now - segment_start
                segment_start, segment_tokens = now, 0
                self.save_checkpoint()
                self._checkpoint_requested = False
                if self._stop_requested:
                    raise TrainingInterrupted(f"stopped {self._stop_reason} at step {self.global_step}, state saved",
                                              "run the same command to resume")
        self.epoch_train_s += time.monotonic() - segment_start

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor, loss_divisor: int) -> None:
        static = self.static_step
        if static is not None and static.fits(inputs):
            self.hidden = static(inputs, targets, self.hidden, self.lr)
            return
        self.hidden = detach(self.hidden)
        logits, self.hidden = self.model(inputs, self.hidden)  # (T, B, V)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
        self.optimizer.zero_grad(set_to_none=True)
        (nll / loss_divisor).backward()
        if self.config.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip, foreach=True)
        self.optimizer.step()
        self.epoch_nll += nll.detach().double()

    def report_progress(self, tokens_per_s: float) -> None:
        mean_nll = self.epoch_nll.item() / max(self.epoch_tokens, 1)
        self._raise_if_diverged(mean_nll)
        self.reporter.progress(Progress(self.epoch + 1, self.chunk, self.chunks_per_epoch, self.lr,
                                        exp_or_inf(mean_nll), tokens_per_s, self.elapsed_s()))

    def checkpoint_due(self, now: float) -> bool:
        config = self.config
        if self._checkpoint_requested:
            return True
        if config.checkpoint_every_steps and self.global_step % config.checkpoint_every_steps == 0:
            return True
        return bool(config.checkpoint_every_min) and now - self._last_checkpoint >= 60 * config.checkpoint_every_min

    def _raise_if_diverged(self, value: float) -> None:
        if not math.isfinite(value):
            raise DivergedError(
                f"training diverged: loss is {value} at epoch {self.epoch + 1}, step {self.global_step} (lr {self.lr:g})",
                "lower --lr or --clip; the last good checkpoint is kept",
            )

    def end_epoch(self, valid_ppl: float | None = None) -> None:
        """Evaluate (unless a fused pack measured `valid_ppl` for this run), record the epoch, save."""
        train_nll = self.epoch_nll.item() / max(self.epoch_tokens, 1)
        self._raise_if_diverged(train_nll)
        if valid_ppl is None:
            valid_ppl = perplexity(self.model, self.valid_data, self.config.bptt, self.reporter.alive)
        self._raise_if_diverged(valid_ppl)
        record = {
            "epoch": self.epoch + 1,
            "lr": self.lr,
            "train_ppl": exp_or_inf(train_nll),
            "valid_ppl": valid_ppl,
            "tokens_per_s": self.epoch_tokens / max(self.epoch_train_s, 1e-9),
            "elapsed_s": self.elapsed_s(),
            "steps": self.global_step,
        }
        self.history.append(record)
        improved = valid_ppl < self.best_valid_ppl
        if improved:
            self.best_valid_ppl, self.best_epoch = valid_ppl, self.epoch + 1
        elif self.config.schedule is Schedule.PLATEAU:
            self.lr *= self.config.lr_decay
        self.epoch, self.chunk = self.epoch + 1, 0
        # the checkpoint first: stopped between the two, a resume writes best.pt from its weights
        self.save_checkpoint()
        if improved:
            save_weights(self.run.best_path, self.model, self.config, self.vocab_size, self.best_epoch, valid_ppl)
        self.run.write_metrics(self.history)
        self.reporter.epoch_end(record)

    def finish(self, truncated: bool) -> dict[str, Any]:
        """The test perplexity with the best epoch's weights, as the last line of metrics.jsonl."""
        best = load_weights(self.run.best_path)
        self.model.load_state_dict(best["model"])
        final = {
            "final": True,
            "test_ppl": perplexity(self.model, self.test_data, self.config.bptt, self.reporter.alive),
            "best_epoch": self.best_epoch,
            "best_valid_ppl": self.best_valid_ppl,
            "epochs": self.epoch,
            "steps": self.global_step,
            "elapsed_s": self.elapsed_s(),
            "truncated": truncated,
            "device": self.device.type,  # for the report's GPU-hours / CPU-hours
            "vocab_size": self.vocab_size,
        }
        self.run.write_metrics(self.history + [final])
        return final

