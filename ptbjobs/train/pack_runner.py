"""Train several run folders in one process as fused packs (train/pack.py): each run checked,
resumed and ended as `runner.run_training` does for one, the training itself batched.

Runs are grouped by shape (config.fusion_key) and by the step they resume at: runs of one group
train as one pack; groups train one after the other. A group of one trains as a pack of one (the
fused model's step and dropout stream, as before it was stopped, whatever left its pack). (Runs of one
pack always save at the same step, so a pack resumes as one group; a run resumed solo elsewhere
meanwhile, or a pack stopped while its runs were saving, forms a group of its own.)
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

from ptbjobs.core.errors import PtbjobsError
from ptbjobs.train.config import TrainConfig, fusion_key
from ptbjobs.train.corpus import load_corpus
from ptbjobs.train.pack import PackTrainer
from ptbjobs.train.reporting import Reporter
from ptbjobs.train.run_dir import RunDir
from ptbjobs.train.runner import (
    check_folder,
    exclusive,
    make_trainer,
    pruned_record,
    record_end,
    resume,
    stop_if_signalled_while_starting,
    tell_judge_if_diverged,
)
from ptbjobs.train.signals import TrainingInterrupted, stop_on_signals
from ptbjobs.train.trainer import RungJudge, RunPruned, Trainer


def run_pack(runs: list[tuple[TrainConfig, Path, Reporter]], data_dir: Path | str | None = None,
             handle_signals: bool = True, on_end: Callable[[Path, Any], None] | None = None,
             cancel_requested: Callable[[Path], bool] | None = None,
             judge_of: Callable[[Path], RungJudge | None] | None = None) -> dict[str, Any]:
    """Train every run to its end. Returns, by run folder, its final record or the error that
    ended it (one run's error never stops the others). A stop signal stops every run with its
    state saved: TrainingInterrupted is raised once all have saved. `on_end(run folder, outcome)`
    is called as each run ends, while the others may train on. A run for which
    `cancel_requested(run folder)` turns true saves its state and leaves (TrainingInterrupted), and
    its folder is free at once for another process to train. `judge_of(run folder)`: the judge
    of the search the run belongs to, if any (a run it pauses ends with `pruned_record`)."""
    outcomes = _Outcomes(on_end)
    ready: list[tuple[RunDir, TrainConfig, Reporter, dict[str, Any] | None]] = []
    for config, out, reporter in runs:
        run = RunDir(out)
        try:
            existing, final = check_folder(run, config, reporter)
        except PtbjobsError as exc:
            outcomes.settle(run.path, exc)
            continue
        if final is not None:
            outcomes.settle(run.path, final)
        else:
            ready.append((run, config, reporter, existing))
    if not ready:
        return dict(outcomes)
    for run, *_ in ready:
        stop_if_signalled_while_starting(run)
    corpus = load_corpus(data_dir)
    with contextlib.ExitStack() as held:
        trainers: list[Trainer] = []
        for run, config, reporter, existing in ready:
            lock = held.enter_context(contextlib.ExitStack())  # each run's, let go as the run ends
            try:
                trainer = make_trainer(run, config, corpus, existing, reporter, solo_step=False)
                trainer.rung_judge = judge_of(run.path) if judge_of else None
                lock.enter_context(exclusive(run))
                resume(run, trainer, corpus.data_dir, reporter, first_start=existing is None)
            except PtbjobsError as exc:
                lock.close()
                outcomes.settle(run.path, exc)
                continue
            trainers.append(trainer)
            outcomes.locks[str(run.path)] = lock
        groups: dict[tuple, list[Trainer]] = {}
        for trainer in trainers:
            groups.setdefault((fusion_key(trainer.config), trainer.global_step), []).append(trainer)
        in_order = list(groups.values())
        for index, group in enumerate(in_order):
            try:
                _train_group(group, handle_signals, outcomes, cancel_requested)
            except BaseException as exc:
                for later in in_order[index + 1:]:  # not started: they stop where they are
                    for trainer in later:
                        trainer.reporter.close()
                        record_end(trainer.run, trainer, exc)
                        outcomes.settle(trainer.run.path, exc)
                raise
    return dict(outcomes)


class _Outcomes(dict):
    """Run folder -> how its run ended, each passed on to `on_end` as it is known."""

    def __init__(self, on_end: Callable[[Path, Any], None] | None):
        super().__init__()
        self.on_end = on_end

        self.locks: dict[str, contextlib.ExitStack] = {}  # run folder -> its lock, while it trains

    def settle(self, path: Path, outcome: Any) -> None:
        self[str(path)] = outcome
        if str(path) in self.locks:
            self.locks.pop(str(path)).close()
        if self.on_end is not None:
            self.on_end(path, outcome)


def _train_group(trainers: list[Trainer], handle_signals: bool, outcomes: _Outcomes,
                 cancel_requested: Callable[[Path], bool] | None) -> None:
    """One group's runs trained together; each run's state.json written as it ends."""
    def ended(trainer: Trainer, outcome: Any) -> None:
        trainer.reporter.close()
        if isinstance(outcome, RunPruned):  # its judge wrote its state, under the sweep's lock
            outcome = pruned_record(outcome.epoch, outcome.record)
        else:
            record_end(trainer.run, trainer, outcome)
            tell_judge_if_diverged(trainer, outcome)
        outcomes.settle(trainer.run.path, outcome)

    received: list[int] = []
    wanted_gone = None if cancel_requested is None else lambda trainer: cancel_requested(trainer.run.path)
    pack = PackTrainer(trainers, on_leave=ended, cancel_requested=wanted_gone)
    try:
        with contextlib.ExitStack() as disk:
            for trainer in trainers:
                disk.enter_context(trainer.run.disk_errors())
            with stop_on_signals(pack, received, enabled=handle_signals):
                pack.fit()
    except BaseException as exc:
        if isinstance(exc, TrainingInterrupted):
            exc.signals = tuple(received)  # a Slurm job requeues itself after USR2, not after TERM
        for trainer in pack.trainers:  # the runs still in the pack end with it
            ended(trainer, exc)
        raise
