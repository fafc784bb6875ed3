"""Run one training in a run folder, start to end or from where it stopped.

This is what `ptbjobs train` calls, and what every scheduled job runs: the same command on the same
folder is idempotent. A finished run is not trained again; an unfinished one resumes from its last
good checkpoint; a folder holding a run of a different config is refused rather than overwritten.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ptbjobs import __version__
from ptbjobs.core import states
from ptbjobs.core.atomic import try_exclusive_lock
from ptbjobs.core.errors import ConfigError, DivergedError, PtbjobsError
from ptbjobs.train import checkpoint
from ptbjobs.train.config import RESUME_NEUTRAL_FIELDS, TrainConfig
from ptbjobs.train.corpus import load_corpus
from ptbjobs.train.ptb_files import CANONICAL_SHA256, SPLITS, sha256_file, split_filename
from ptbjobs.train.run_dir import DamagedFile, RunDir
from ptbjobs.train.signals import TrainingInterrupted, stop_on_signals, take_pending_stop
from ptbjobs.train.trainer import Reporter, SilentReporter, Trainer


def run_training(config: TrainConfig, out: Path, data_dir: Path | str | None = None,
                 reporter: Reporter | None = None, handle_signals: bool = True) -> dict[str, Any]:
    """Train the run in `out` to completion and return its final metrics record."""
    reporter = reporter or SilentReporter()
    run = RunDir(out)
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError(None, f"--out {out} is a file, not a folder", "give a folder path")
    # a damaged file of the folder is written anew; the checkpoint, which holds the config too and
    # checks itself, is what the run resumes from (and what refuses another config)
    existing = _unless_damaged(run.read_config, reporter)
    if existing is not None:
        _refuse_changed_config(run, TrainConfig.from_mapping(existing["train"], source=str(run.config_path)), config)
    if run.config_path.exists():
        state = _unless_damaged(run.read_state, reporter)
        _refuse_diverged(run, state)
        final = _final_record(run, state, reporter)
        if final is not None:
            reporter.note(f"{out} is already complete: test perplexity {final['test_ppl']:.2f}")
            return final
    _stop_if_signalled_while_starting(run)  # before the data and the device are made ready
    corpus = load_corpus(data_dir)
    trainer = Trainer(config, corpus, run, reporter)  # before any write: a config it rejects leaves nothing
    _stop_if_signalled_while_starting(run)
    run.create()
    with _exclusive(run):
        return _train(run, trainer, config, corpus.data_dir, reporter, first_start=existing is None,
                      handle_signals=handle_signals)


def _train(run: RunDir, trainer: Trainer, config: TrainConfig, data_dir: Path, reporter: Reporter,
           first_start: bool, handle_signals: bool) -> dict[str, Any]:
    """Resume from the newest good checkpoint (if any) and train to the end, keeping state.json."""
    if first_start:
        run.write_json(run.config_path, _config_record(config, data_dir))
    resumed = checkpoint.load_latest(run.checkpoint_dir)
    if resumed is not None:
        state, path = resumed
        trainer.load_state(state)
    reporter.start(config, run, str(resumed[1]) if resumed else None)
    run.write_state(states.RUNNING, epoch=trainer.epoch, step=trainer.global_step, device=trainer.device.type)
    received: list[int] = []
    try:
        with stop_on_signals(trainer, received, enabled=handle_signals):
            final = trainer.fit()
    except DivergedError as exc:
        run.write_state(states.DIVERGED, message=exc.message)
        raise
    except TrainingInterrupted as exc:
        exc.signals = tuple(received)  # a Slurm job requeues itself after USR2, not after TERM
        run.write_state(states.INTERRUPTED, message=exc.message, step=trainer.global_step)
        raise
    except BaseException as exc:
        run.write_state(states.FAILED, message=f"{type(exc).__name__}: {exc}", step=trainer.global_step)
        raise
    finally:
        reporter.close()
    run.write_state(states.COMPLETED, test_ppl=final["test_ppl"], best_epoch=final["best_epoch"])
    reporter.finish(final)
    return final


def _unless_damaged(read: Callable[[], Any], reporter: Reporter) -> Any:
    """What `read` reads from the run folder, or None (said on the reporter) if the file is damaged."""
    try:
        return read()
    except DamagedFile as exc:
        reporter.note(f"{exc.path} {exc.problem}: resuming from the last checkpoint, which writes it anew")
        return None


def _refuse_diverged(run: RunDir, state: dict[str, Any] | None) -> None:
    """Resuming a diverged run replays the same steps into the same NaN: say so instead."""
    if state and state["state"] == states.DIVERGED:
        raise DivergedError(f"{run.path} diverged earlier: {state.get('message', '')}",
                            "train again in a new --out with a lower --lr or --clip")


@contextlib.contextmanager
def _exclusive(run: RunDir) -> Iterator[None]:
    """One process trains a run folder at a time: a second one (a job submitted twice, a
    `ptbjobs train` started by hand beside a job) is refused instead of interleaving writes."""
    with open(run.path / ".train.lock", "a") as handle:
        if not try_exclusive_lock(handle):
            raise PtbjobsError(f"{run.path} is being trained by another process right now",
                               "wait for it, or stop it first")
        yield


def _final_record(run: RunDir, state: dict[str, Any] | None, reporter: Reporter) -> dict[str, Any] | None:
    """The run's final record if it has completed: state.json says so and metrics.jsonl ends with
    it. A run whose files do not both say so resumes (and finishes at once if it had)."""
    if not state or state["state"] != states.COMPLETED:
        return None
    return _unless_damaged(run.final_record, reporter)


def _refuse_changed_config(run: RunDir, before: TrainConfig, now: TrainConfig) -> None:
    old, new = before.to_dict(), now.to_dict()
    changed = [key for key in new if key not in RESUME_NEUTRAL_FIELDS and old.get(key) != new[key]]
    if changed:
        detail = ", ".join(f"{key} {old.get(key)!r} -> {new[key]!r}" for key in changed)
        raise PtbjobsError(f"{run.path} holds a run with another config ({detail})",
                           "use another --out, or delete that folder to start over")


def _config_record(config: TrainConfig, data_dir: Path) -> dict[str, Any]:
    files = {}
    for split in SPLITS:
        path = data_dir / split_filename(split)
        digest = sha256_file(path)
        files[split] = {"sha256": digest, "canonical": digest == CANONICAL_SHA256[split]}
    return {"ptbjobs_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "train": config.to_dict(), "data": {"dir": str(data_dir.resolve()), "files": files}}


def _stop_if_signalled_while_starting(run: RunDir) -> None:
    """Stop now if USR2/TERM came while the job started (signals.defer_stop_signals), before
    more time goes into getting ready: nothing has been trained in this process, so the run's
    state on disk is its last checkpoint, where it will resume."""
    stopped = take_pending_stop()
    if stopped is None:
        return
    if run.state_path.exists():  # a run resuming: say it stopped, rather than leave a stale RUNNING
        run.write_state(states.INTERRUPTED, message=stopped.message)
    raise stopped
