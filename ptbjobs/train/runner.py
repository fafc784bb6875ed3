"""Run one training in a run folder, start to end or from where it stopped.

This is what `ptbjobs train` calls, and what every scheduled job runs: the same command on the same
folder is idempotent. A finished run is not trained again; an unfinished one resumes from its last
good checkpoint; a folder holding a run of a different config is refused rather than overwritten, and
so is a resume on other data than the run started with, or with a best.pt of another epoch. A disk
that refuses a write (full, read-only) ends the run with one line; the last checkpoint stays intact.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ptbjobs import __version__
from ptbjobs.core import states
from ptbjobs.core.atomic import try_exclusive_lock
from ptbjobs.core.errors import ConfigError, DivergedError, PtbjobsError
from ptbjobs.train import checkpoint
from ptbjobs.train.checkpoint import load_weights, save_weights
from ptbjobs.train.config import RESUME_NEUTRAL_FIELDS, TrainConfig
from ptbjobs.train.corpus import Corpus, load_corpus
from ptbjobs.train.ptb_files import CANONICAL_SHA256, SPLITS, sha256_file, split_filename
from ptbjobs.train.reporting import Reporter, SilentReporter
from ptbjobs.train.run_dir import DamagedFile, RunDir
from ptbjobs.train.signals import TrainingInterrupted, stop_on_signals, take_pending_stop
from ptbjobs.train.trainer import RungJudge, RunPruned, Trainer

log = logging.getLogger(__name__)
NEW_RUN_HINT = "start a new run with a new --out"
PAUSED_HANDOVER_S = 60.0  # how long a promoted run waits for the process the search paused to exit


def run_training(config: TrainConfig, out: Path, data_dir: Path | str | None = None,
                 reporter: Reporter | None = None, handle_signals: bool = True,
                 judge: RungJudge | None = None) -> dict[str, Any]:
    """Train the run in `out` to completion and return its final metrics record; or, where a
    search's `judge` pauses it at a rung, `pruned_record` of that epoch."""
    reporter = reporter or SilentReporter()
    run = RunDir(out)
    with run.disk_errors():
        return _run_training(run, config, data_dir, reporter, handle_signals, judge)


def _run_training(run: RunDir, config: TrainConfig, data_dir: Path | str | None, reporter: Reporter,
                  handle_signals: bool, judge: RungJudge | None) -> dict[str, Any]:
    existing, final = check_folder(run, config, reporter)
    if final is not None:
        return final
    stop_if_signalled_while_starting(run)  # before the data and the device are made ready
    corpus = load_corpus(data_dir)
    trainer = make_trainer(run, config, corpus, existing, reporter)
    trainer.rung_judge = judge
    stop_if_signalled_while_starting(run)
    with exclusive(run):
        resume(run, trainer, corpus.data_dir, reporter, first_start=existing is None)
        return _train(run, trainer, reporter, handle_signals=handle_signals)


def check_folder(run: RunDir, config: TrainConfig, reporter: Reporter) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the folder's config.json record if any, the final record if the run has completed):
    refuses a folder that is a file, holds another config, or a diverged run."""
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError(None, f"--out {run.path} is a file, not a folder", "give a folder path")
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
            reporter.note(f"{run.path} is already complete: test perplexity {final['test_ppl']:.2f}")
            return existing, final
    return existing, None


def make_trainer(run: RunDir, config: TrainConfig, corpus: Corpus, existing: dict[str, Any] | None,
                 reporter: Reporter, solo_step: bool = True) -> Trainer:
    """The run's trainer, on the data it started with, before any write (a config it rejects leaves nothing)."""
    if existing is not None:
        _refuse_changed_data(existing, corpus.data_dir)
    trainer = Trainer(config, corpus, run, reporter, solo_step=solo_step)
    run.create()
    return trainer


def resume(run: RunDir, trainer: Trainer, data_dir: Path, reporter: Reporter, first_start: bool) -> None:
    """The trainer at the newest good checkpoint (if any), best.pt checked against it, and the
    run RUNNING. Call holding the folder (`exclusive`)."""
    for leftover in run.remove_leftover_temp_files():
        reporter.note(f"removed {leftover}, left by a write that was cut off")
    if first_start:
        run.write_json(run.config_path, _config_record(trainer.config, data_dir))
    resumed = checkpoint.load_latest(run.checkpoint_dir)
    if resumed is not None:
        state, path = resumed
        trainer.load_state(state)
        _check_best_weights(run, trainer, reporter)
    reporter.start(trainer.config, run, str(resumed[1]) if resumed else None)
    run.write_state(states.RUNNING, epoch=trainer.epoch, step=trainer.global_step, device=trainer.device.type)


def _train(run: RunDir, trainer: Trainer, reporter: Reporter, handle_signals: bool) -> dict[str, Any]:
    """Train to the end, keeping state.json."""
    received: list[int] = []
    try:
        with run.disk_errors(), stop_on_signals(trainer, received, enabled=handle_signals):
            final = trainer.fit()
    except RunPruned as pruned:  # the judge wrote its state, under the sweep's lock
        reporter.note(f"paused by the search at epoch {pruned.epoch}: not among the best of its rung so far")
        return pruned_record(pruned.epoch, pruned.record)
    except TrainingInterrupted as exc:
        exc.signals = tuple(received)  # a Slurm job requeues itself after USR2, not after TERM
        record_end(run, trainer, exc)
        raise
    except BaseException as exc:
        record_end(run, trainer, exc)
        tell_judge_if_diverged(trainer, exc)
        raise
    finally:
        reporter.close()
    record_end(run, trainer, final)
    return final


def tell_judge_if_diverged(trainer: Trainer, outcome: Any) -> None:
    """A diverged run of a search counts at its next rung, so the others' verdicts do not wait for
    it. (Where the sweep folder refuses the write, they wait: the run's own error is the one to show.)"""
    if isinstance(outcome, DivergedError) and trainer.rung_judge is not None:
        with contextlib.suppress(OSError, PtbjobsError):
            trainer.rung_judge.diverged(trainer.epoch)


def pruned_record(epoch: int, record: dict[str, Any]) -> dict[str, Any]:
    """What a run paused by a search returns, in place of its final record."""
    return {"pruned": True, "epoch": epoch, "valid_ppl": record["valid_ppl"], "train_ppl": record["train_ppl"]}


def record_end(run: RunDir, trainer: Trainer, outcome: dict[str, Any] | BaseException) -> None:
    """state.json as the run's training ends: COMPLETED with its final record, else DIVERGED,
    INTERRUPTED or FAILED with the exception that ended it."""
    if isinstance(outcome, DivergedError):
        _write_end_state(run, states.DIVERGED, message=outcome.message)
    elif isinstance(outcome, TrainingInterrupted):
        _write_end_state(run, states.INTERRUPTED, message=outcome.message, step=trainer.global_step)
    elif isinstance(outcome, BaseException):
        _write_end_state(run, states.FAILED, message=f"{type(outcome).__name__}: {outcome}", step=trainer.global_step)
    else:
        run.write_state(states.COMPLETED, test_ppl=outcome["test_ppl"], best_epoch=outcome["best_epoch"])
        trainer.reporter.finish(outcome)


def _write_end_state(run: RunDir, state: str, **details: Any) -> None:
    """state.json as the run ends on an error, where the disk still takes it: a full or read-only
    disk may refuse this too, and then the error that ended the run is the one to show."""
    try:
        run.write_state(state, **details)
    except OSError as exc:
        log.debug("could not record %s in %s: %s", state, run.state_path, exc)


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
def exclusive(run: RunDir) -> Iterator[None]:
    """One process trains a run folder at a time: a second one (a job submitted twice, a
    `ptbjobs train` started by hand beside a job) is refused instead of interleaving writes."""
    with open(run.path / ".train.lock", "a") as handle:
        # a run promoted by a search may start while the process it paused is still exiting
        handover_until = time.monotonic() + (PAUSED_HANDOVER_S if _promoted_from_pause(run) else 0.0)
        while not try_exclusive_lock(handle):
            if time.monotonic() >= handover_until:
                raise PtbjobsError(f"{run.path} is being trained by another process right now",
                                   "wait for it, or stop it first")
            time.sleep(0.2)
        yield


def _promoted_from_pause(run: RunDir) -> bool:
    with contextlib.suppress(DamagedFile):
        record = run.read_state()
        return bool(record) and record["state"] == states.INTERRUPTED and bool(record.get("promoted"))
    return False


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


def _refuse_changed_data(config_record: dict[str, Any], data_dir: Path) -> None:
    """Refuse to go on with data files other than those the run started with (the sha256 that
    config.json recorded): its epochs would be trained on two corpora. The folder may differ (a
    copy on another node); the bytes may not. A record without the sha256 is not checked."""
    try:
        recorded_sha256 = {split: entry["sha256"] for split, entry in config_record["data"]["files"].items()}
    except (KeyError, TypeError, AttributeError):
        return
    for split in SPLITS:
        recorded = recorded_sha256.get(split)
        path = data_dir / split_filename(split)
        if recorded and (now := sha256_file(path)) != recorded:
            raise PtbjobsError(f"data file {path} changed since this run started "
                               f"(sha256 {now[:12]}..., was {recorded[:12]}...)", f"restore it, or {NEW_RUN_HINT}")


def _check_best_weights(run: RunDir, trainer: Trainer, reporter: Reporter) -> None:
    """best.pt must hold the best epoch the checkpoint restored: the test perplexity is measured
    with it at the end. A checkpoint taken at the end of that very epoch holds those weights too
    (the run stopped between the two writes), and best.pt is written anew from it; otherwise a
    best.pt of another epoch, or none, is refused. One from before best.pt named its epoch passes."""
    if trainer.best_epoch == 0:
        return  # no epoch has ended: the first to end writes best.pt, whatever is there now
    problem = _best_weights_problem(run.best_path, trainer)
    if problem is None:
        return
    if (trainer.epoch, trainer.chunk) == (trainer.best_epoch, 0):
        save_weights(run.best_path, trainer.model, trainer.config, trainer.vocab_size, trainer.best_epoch,
                     trainer.best_valid_ppl)
        reporter.note(f"{run.best_path} {problem}: written anew from the checkpoint at the end of that epoch")
        return
    raise PtbjobsError(f"{run.best_path} {problem}",
                       f"put back the best.pt of epoch {trainer.best_epoch}, or {NEW_RUN_HINT}")


def _best_weights_problem(path: Path, trainer: Trainer) -> str | None:
    """What is wrong with best.pt for the restored state, or None if nothing is."""
    best = f"the best epoch {trainer.best_epoch} (valid ppl {trainer.best_valid_ppl:.2f}) of the checkpoint"
    if not path.exists():
        return f"is missing; it must hold {best}"
    try:
        saved = load_weights(path)
    except PtbjobsError:
        return f"is not a readable weights file; it must hold {best}"
    epoch, valid_ppl = saved.get("epoch"), saved.get("valid_ppl")
    if epoch is None or (epoch == trainer.best_epoch and valid_ppl in (None, trainer.best_valid_ppl)):
        return None
    holds = f"epoch {epoch}" + (f" (valid ppl {valid_ppl:.2f})" if isinstance(valid_ppl, float) else "")
    return f"holds {holds}, not {best}"


def _config_record(config: TrainConfig, data_dir: Path) -> dict[str, Any]:
    files = {}
    for split in SPLITS:
        path = data_dir / split_filename(split)
        digest = sha256_file(path)
        files[split] = {"sha256": digest, "canonical": digest == CANONICAL_SHA256[split]}
    return {"ptbjobs_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "train": config.to_dict(), "data": {"dir": str(data_dir.resolve()), "files": files}}


def stop_if_signalled_while_starting(run: RunDir) -> None:
    """Stop now if USR2/TERM came while the job started (signals.defer_stop_signals), before
    more time goes into getting ready: nothing has been trained in this process, so the run's
    state on disk is its last checkpoint, where it will resume."""
    stopped = take_pending_stop()
    if stopped is None:
        return
    if run.state_path.exists():  # a run resuming: say it stopped, rather than leave a stale RUNNING
        run.write_state(states.INTERRUPTED, message=stopped.message)
    raise stopped
