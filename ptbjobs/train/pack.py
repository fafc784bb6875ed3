"""A fused pack: runs of one shape trained in lockstep as one batched model (train/fused.py), each
still an ordinary run.

Each run keeps its own `Trainer`, and with it what makes it a run: its position, lr and schedule,
running loss, history, best epoch, checkpoints, best.pt and metrics.jsonl, all in the solo formats.
Its model's weights are views of its slice of the pack's weights, and its running loss a view of
its slot in the pack's; the pack takes the steps and evaluates, batched, and each run's trainer
does the rest as it does alone (`begin_epoch`, `end_epoch(valid_ppl)`, `save_checkpoint`,
`finish`). So `status`, `report`, `eval` and `logs` see ordinary runs, and a run trained fused
resumes solo from its checkpoint (correctly, not bit for bit: the solo step draws its dropout from
torch's generator, and cuDNN rounds differently).

The runs of a pack go through the same chunks in the same order, so they are always at the same
step: they save their checkpoints at the same step, and a pack stopped anywhere resumes exactly
(bit for bit on CPU with the same thread count). A run leaves the pack when it ends (its epochs
done, diverged, or cancelled alone); the others go on in a pack rebuilt without it.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any, Callable

import torch

from ptbjobs.core.errors import DivergedError
from ptbjobs.train.corpus import iter_chunks
from ptbjobs.train.fused import FusedModel
from ptbjobs.train.fused_cpu import FusedStep
from ptbjobs.train.model import Hidden
from ptbjobs.train.signals import CANCEL_CHECK_S, TrainingInterrupted
from ptbjobs.train.trainer import POLL_INTERVAL_S, RunPruned, Trainer, exp_or_inf


class PackTrainer:
    """Train runs at the same step as one fused model. `fit()` trains every run to its end and
    returns, by run folder, each run's final record or the DivergedError that ended it."""

    def __init__(self, trainers: list[Trainer], on_leave: Callable[[Trainer, Any], None] | None = None,
                 cancel_requested: Callable[[Trainer], bool] | None = None):
        """`on_leave(trainer, outcome)` is called as each run ends: its final record, or the
        DivergedError or TrainingInterrupted that ended it. `cancel_requested(trainer)`, asked at
        each poll, lets a run go: it saves its state and leaves, the others train on."""
        if len({(t.epoch, t.chunk, t.global_step) for t in trainers}) != 1:
            raise ValueError("the runs of a fused pack must be at the same step")
        self.trainers = list(trainers)
        self.on_leave = on_leave
        self.cancel_requested = cancel_requested
        self._next_cancel_check = 0.0
        self.results: dict[str, Any] = {}
        self._checkpoint_requested = False
        self._stop_requested = False
        self._stop_reason = ""
        self._stop_at_step: int | None = None
        self._bind()

    # ---- the signal handler's interface (signals.Stoppable) ----

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def request_checkpoint(self, stop: bool = False, reason: str = "on request") -> None:
        """Ask every run to save at the next step, and to stop after it if `stop`. Sets flags only."""
        self._checkpoint_requested = True
        if stop and not self._stop_requested:
            self._stop_requested, self._stop_reason = True, reason

    # ---- binding the runs into one model ----

    def _bind(self) -> None:
        """Build the fused model over the runs in the pack, from their state now."""
        if getattr(self, "step", None) is not None:
            self.step.close()
        self.fused = FusedModel([t.model for t in self.trainers], [t.config for t in self.trainers])
        self.step = FusedStep(self.fused)
        for trainer in self.trainers:  # its optimiser must hold its model's new parameters
            trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=trainer.lr,
                                                weight_decay=trainer.config.weight_decay, foreach=True)
        self.epoch_nll = torch.tensor([t.epoch_nll.item() for t in self.trainers], dtype=torch.float64,
                                      device=self.fused.device)
        for index, trainer in enumerate(self.trainers):
            trainer.epoch_nll = self.epoch_nll[index]  # a view: the trainer reads and resets its slot
        self.hidden = self._pack_hidden()

    def _per_layer_states(self, trainer: Trainer) -> list[list[torch.Tensor]]:
        """A run's hidden state as [layer][h, c] of (B, H), from the solo model's layout."""
        per_layer = len(self.fused.init_hidden(1)) // self.fused.layers
        if trainer.model.fused:  # one multi-layer module: [h, c], each (layers, B, H)
            return [[state[layer] for state in trainer.hidden] for layer in range(self.fused.layers)]
        return [[state[0] for state in trainer.hidden[layer * per_layer:(layer + 1) * per_layer]]
                for layer in range(self.fused.layers)]

    def _pack_hidden(self) -> Hidden:
        states = [self._per_layer_states(t) for t in self.trainers]
        return [torch.stack([run[layer][index] for run in states])
                for layer in range(self.fused.layers) for index in range(len(states[0][layer]))]

    def _hand_back_hidden(self) -> None:
        """Each run's trainer gets its slice of the pack's state, in the solo layout (for its checkpoint)."""
        per_layer = len(self.hidden) // self.fused.layers
        for k, trainer in enumerate(self.trainers):
            layers = [[self.hidden[layer * per_layer + j][k] for j in range(per_layer)] for layer in range(self.fused.layers)]
            if trainer.model.fused:
                trainer.hidden = [torch.stack([layer[j] for layer in layers]) for j in range(per_layer)]
            else:
                trainer.hidden = [state.unsqueeze(0) for layer in layers for state in layer]

    def _leave(self, trainer: Trainer, result: Any) -> None:
        """A run ends: the others go on in a pack rebuilt without it."""
        self._hand_back_hidden()
        self.results[str(trainer.run.path)] = result
        self.trainers.remove(trainer)
        if self.on_leave is not None:
            self.on_leave(trainer, result)
        if self.trainers:
            self._bind()
        else:
            self.step.close()

    # ---- training ----

    def fit(self) -> dict[str, Any]:
        while self.trainers:
            for trainer in [t for t in self.trainers if t.chunk == 0 and t.epoch >= t.config.epochs]:
                self._leave(trainer, trainer.finish(truncated=False))
            for trainer in [t for t in self.trainers if t.chunk == 0 and t.steps_left() <= 0]:
                self._leave(trainer, trainer.finish(truncated=True))
            for trainer in [t for t in self.trainers if t.chunk == 0]:
                try:  # a search's judge may pause a run at a rung: it leaves, the others go on
                    trainer.judge_at_rung()
                except RunPruned as pruned:
                    self._leave(trainer, pruned)
            self._let_cancelled_go()
            if not self.trainers:
                break
            self._train_epoch()
            self._end_epoch()
        return self.results

    def run_steps(self, steps: int) -> None:
        """`steps` more steps within the current epoch, nothing else (benchmarks and tests)."""
        self._stop_at_step = self.trainers[0].global_step + steps
        try:
            self._train_epoch()
        finally:
            self._stop_at_step = None

    def _steps_left(self) -> float:
        left = self.trainers[0].steps_left()  # max_steps is one of the settings a pack shares
        return left if self._stop_at_step is None else min(left, self._stop_at_step - self.trainers[0].global_step)

    def _train_epoch(self) -> None:
        for trainer in self.trainers:
            trainer.begin_epoch()
        self.hidden = self._pack_hidden()  # (reset at an epoch's start, as each trainer's was)
        first = self.trainers[0]  # (the data and the chunking: the same for every run of the pack)
        config = first.config
        lrs = self._lrs()
        segment_start, segment_tokens = time.monotonic(), 0
        next_poll = segment_start + POLL_INTERVAL_S
        chunks = iter_chunks(first.train_data, config.bptt, first=first.chunk)
        while self.trainers:
            step = self.trainers[0].global_step  # (of a run still in the pack: `first` may have left)
            segment = [(inputs, targets, step + i, config.loss_scale.divisor(inputs))
                       for i, (_, inputs, targets) in enumerate(itertools.islice(chunks, self._segment_length()))]
            if not segment:
                break
            self.hidden, nll = self.step.train_steps(segment, self.hidden, lrs)
            for step_nll in nll:  # step by step, as a solo run adds its losses up
                self.epoch_nll += step_nll.double()
            tokens = sum(targets.numel() for _, targets, _, _ in segment)
            for trainer in self.trainers:
                trainer.chunk, trainer.global_step = trainer.chunk + len(segment), trainer.global_step + len(segment)
                trainer.epoch_tokens += tokens
            segment_tokens += tokens
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + POLL_INTERVAL_S
                self._poll(segment_tokens / max(now - segment_start, 1e-9))
                lrs = self._lrs()  # (a run may have left)
            if self._checkpoint_requested or any(t.checkpoint_due(now) for t in self.trainers):
                for trainer in self.trainers:
                    trainer.epoch_train_s += now - segment_start
                segment_start, segment_tokens = now, 0
                self._save_all()
                lrs = self._lrs()  # (a run may have left)
                if self._stop_requested:
                    raise TrainingInterrupted(f"stopped {self._stop_reason} at step {step + len(segment)}, state saved",
                                              "run the same command to resume")
        if not self.trainers:
            return
        for trainer in self.trainers:
            trainer.epoch_train_s += time.monotonic() - segment_start

    def _segment_length(self) -> int:
        """Steps to take before the pack next looks at signals, progress and checkpoints: at most
        the step's own segment, never past the epoch's end, the steps asked for, or a run's next
        checkpoint by steps (which is then taken at the step it would be alone)."""
        first = self.trainers[0]
        length = min(self.step.segment_steps, first.chunks_per_epoch - first.chunk, self._steps_left())
        for every in {t.config.checkpoint_every_steps for t in self.trainers if t.config.checkpoint_every_steps}:
            length = min(length, every - first.global_step % every)
        return max(0, int(length))

    def _lrs(self) -> torch.Tensor:
        return torch.tensor([t.lr for t in self.trainers], device=self.fused.device)

    def _poll(self, tokens_per_s: float) -> None:
        """Each run's progress; a run whose loss is no longer finite leaves the pack, diverged,
        and one cancelled alone leaves with its state saved."""
        for trainer in list(self.trainers):
            try:
                trainer.report_progress(tokens_per_s)
            except DivergedError as exc:
                self._leave(trainer, exc)
        self._let_cancelled_go()

    def _let_cancelled_go(self) -> None:
        """Runs cancelled alone save their state and leave (asked at most every CANCEL_CHECK_S: a
        file per run, on a shared filesystem)."""
        if self.cancel_requested is None or time.monotonic() < self._next_cancel_check:
            return
        self._next_cancel_check = time.monotonic() + CANCEL_CHECK_S
        for trainer in [t for t in self.trainers if self.cancel_requested(t)]:
            self._hand_back_hidden()
            try:
                trainer.save_checkpoint()
            except DivergedError as exc:
                self._leave(trainer, exc)
                continue
            self._leave(trainer, TrainingInterrupted(f"cancelled at step {trainer.global_step}, state saved",
                                                     "`ptbjobs retry` resumes it"))

    def _save_all(self) -> None:
        """Every run's checkpoint at this same step (a run that diverged since the last poll leaves)."""
        self._hand_back_hidden()
        for trainer in list(self.trainers):
            try:
                trainer.save_checkpoint()
            except DivergedError as exc:
                self._leave(trainer, exc)
            trainer._checkpoint_requested = False
        self._checkpoint_requested = False

    def _end_epoch(self) -> None:
        """Evaluate every run at once; each run's trainer records its epoch and saves."""
        first = self.trainers[0]
        summed, tokens = self.fused.summed_nll(first.valid_data, first.config.bptt)
        self._hand_back_hidden()
        for trainer, total in zip(list(self.trainers), summed.tolist()):
            valid_ppl = exp_or_inf(total / tokens) if math.isfinite(total) else math.inf
            try:
                trainer.end_epoch(valid_ppl)
            except DivergedError as exc:
                self._leave(trainer, exc)
