"""What every job runs, on either executor: the training described by a run folder's spec.json.

`submit` writes spec.json into each run folder; the job (a local worker process, a Slurm array task,
or one run of a packed task as its own process: `python -m ptbjobs.executors.job RUN_DIR`) needs
only the folder's path, and running it twice is harmless: a finished run is left alone and an
unfinished one resumes from its checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from ptbjobs.core.atomic import atomic_write_bytes, replace_unsynced
from ptbjobs.train.config import TrainConfig
from ptbjobs.train.signals import defer_stop_signals

SPEC_FILE = "spec.json"


CANCEL_FILE = "cancel.json"  # in a run folder: `ptbjobs cancel` asks the pack holding the run to let it go


def request_cancel(run_dir: Path, job_id: str) -> None:
    """Ask the job `job_id`, which trains this run with others (a pack), to stop this run alone:
    it saves the run's state and lets it go at its next poll (or never starts it), and the others
    train on."""
    atomic_write_bytes(run_dir / CANCEL_FILE, (json.dumps({"job_id": job_id}) + "\n").encode())


def cancel_requested(run_dir: Path | str, job_id: str) -> bool:
    """Has `ptbjobs cancel` asked the job `job_id` to let this run go? (A request names its job:
    the run's next job, after a retry, is not bound by it.)"""
    try:
        with open(f"{run_dir}/{CANCEL_FILE}") as handle:
            return json.loads(handle.read()).get("job_id") == job_id
    except (OSError, ValueError, AttributeError):
        return False


def exit_code_path(run_dir: Path | str, job_id: str) -> Path:
    """Where a run of a pack records how it ended (its exit code, as `ptbjobs train`'s): status
    reads it to show a run that ended while its pack-mates train on."""
    return Path(run_dir) / "logs" / f"{job_id}.exit"


def write_exit_code(run_dir: Path | str, job_id: str, code: int) -> None:
    exit_code_path(run_dir, job_id).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(exit_code_path(run_dir, job_id), f"{code}\n".encode())


def read_exit_code(run_dir: Path | str, job_id: str) -> int | None:
    """The run's exit code in job `job_id`, or None: not ended yet (or not a run of a pack)."""
    try:
        with open(exit_code_path(run_dir, job_id)) as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


def write_spec(run_dir: Path, config: TrainConfig | dict[str, Any], data_dir: Path, durable: bool = True,
               search: dict[str, Any] | None = None) -> None:
    """The run's spec.json; with `search`, what the judge of a search's rungs needs of the run
    (executors/rungs.py). `durable=False` skips its fsyncs: the caller writing many flushes the
    filesystem once after the last (`flush_filesystem`), before any job can read them."""
    os.makedirs(run_dir, exist_ok=True)
    spec = {"train": config if isinstance(config, dict) else config.to_dict(), "data_dir": str(data_dir)}
    if search:
        spec["search"] = search
    payload = (json.dumps(spec) + "\n").encode()  # one line: json's indenting encoder is 10 times slower
    (atomic_write_bytes if durable else replace_unsynced)(run_dir / SPEC_FILE, payload)


def read_spec(run_dir: Path) -> tuple[TrainConfig, Path, Any]:
    """What to train, on which data, and the judge of the search the run belongs to
    (executors/rungs.py), or None: not in a search with rungs."""
    spec = json.loads((run_dir / SPEC_FILE).read_text())
    judge = None
    if spec.get("search"):
        from ptbjobs.executors.rungs import RungJudge

        judge = RungJudge(run_dir, spec["search"])
    return TrainConfig.from_mapping(spec["train"], source=str(run_dir / SPEC_FILE)), Path(spec["data_dir"]), judge


def run_job(run_dir: Path) -> dict[str, Any]:
    """Train the run in `run_dir` to the end, logging plain lines to stderr and keeping
    progress.json (the run's heartbeat) fresh for `ptbjobs status`."""
    from ptbjobs.train.progress import PlainReporter, ProgressFileReporter  # torch: only where a run trains
    from ptbjobs.train.runner import run_training

    config, data_dir, judge = read_spec(run_dir)
    reporter = ProgressFileReporter(run_dir, PlainReporter())
    return run_training(config, run_dir, data_dir, reporter=reporter, judge=judge)


def run_fused(run_dirs: list[Path], job_id: str | None = None) -> dict[str, Any]:
    """Train these runs as fused packs in one process (train/pack_runner.py): by run folder, each
    one's final record or the error that ended it. With `job_id`, each run logs to its own
    logs/<job id>.log, as a run of its own process would, and its exit code goes to
    logs/<job id>.exit as soon as it ends (status shows it ended while its pack-mates train on);
    else all log to stderr, each line led by the run's name."""
    from ptbjobs.core.errors import ConfigError
    from ptbjobs.train.pack_runner import run_pack
    from ptbjobs.train.progress import PlainReporter, ProgressFileReporter
    from ptbjobs.train.signals import TrainingInterrupted

    outcomes: dict[str, Any] = {}
    if job_id is not None:
        for run_dir in [d for d in run_dirs if cancel_requested(d, job_id)]:  # cancelled before the pack started
            outcomes[str(run_dir)] = TrainingInterrupted("cancelled before it started", "`ptbjobs retry` starts it")
            write_exit_code(run_dir, job_id, TrainingInterrupted.exit_code)
        run_dirs = [d for d in run_dirs if str(d) not in outcomes]
        if not run_dirs:
            return outcomes
    specs = [(run_dir, *read_spec(run_dir)) for run_dir in run_dirs]
    data_dirs = {data_dir for _, _, data_dir, _ in specs}
    judges = {run_dir: judge for run_dir, _, _, judge in specs}
    if len(data_dirs) != 1:
        raise ConfigError(None, f"runs of one fused pack read different data folders ({', '.join(map(str, data_dirs))})",
                          "submit them in one grid")
    with contextlib.ExitStack() as held:
        logs: dict[Path, Any] = {}  # run folder -> its own log, with a job id
        runs = []
        for run_dir, config, _, _ in specs:
            if job_id is None:
                inner = PlainReporter(prefix=f"{run_dir.name}: ")
            else:
                (run_dir / "logs").mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):  # an earlier start's: this one is not over
                    exit_code_path(run_dir, job_id).unlink()
                logs[run_dir] = held.enter_context(open(run_dir / "logs" / f"{job_id}.log", "a"))
                inner = PlainReporter(logs[run_dir])
            runs.append((config, run_dir, ProgressFileReporter(run_dir, inner)))

        def ended(run_dir: Path, outcome: Any) -> None:
            if run_dir not in logs:
                return
            if isinstance(outcome, BaseException):
                print(f"ptbjobs: {error_line(outcome)}", file=logs[run_dir], flush=True)
            write_exit_code(run_dir, job_id, exit_code(outcome))

        def cancelled(run_dir: Path) -> bool:
            return job_id is not None and cancel_requested(run_dir, job_id)

        return {**outcomes, **run_pack(runs, data_dirs.pop(), on_end=ended, cancel_requested=cancelled,
                                       judge_of=judges.get)}


def exit_code(outcome: Any) -> int:
    """A run's exit code from how it ended, as `ptbjobs train`'s: 0 done, 75 stopped with its
    state saved, 3 diverged, 2 bad input, else 1."""
    from ptbjobs.core.errors import PtbjobsError

    if not isinstance(outcome, BaseException):
        return 0
    return outcome.exit_code if isinstance(outcome, PtbjobsError) else 1


def error_line(exc: BaseException) -> str:
    from ptbjobs.core.errors import PtbjobsError

    if isinstance(exc, PtbjobsError):
        return f"{'error: ' if exc.is_error else ''}{exc}"
    return f"error: {type(exc).__name__}: {exc}"


def main(argv: list[str]) -> int:
    """`python -m ptbjobs.executors.job [--job-id ID] RUN_DIR...`: one run of a packed job, as its
    own process, or several as fused packs (with --job-id, each run logging to its own folder). Exit codes as `ptbjobs train`: 0 done, 75 stopped with its state
    saved, 3 diverged, 2 bad input, else failed (of several runs: the first run's that did not finish)."""
    import socket
    import time

    from ptbjobs.core.errors import ConfigError, PtbjobsError

    job_id = None
    if argv[:1] == ["--job-id"] and len(argv) > 1:
        job_id, argv = argv[1], argv[2:]
    if not argv or argv[0].startswith("-"):
        print("usage: python -m ptbjobs.executors.job [--job-id ID] RUN_DIR...", file=sys.stderr)
        return 2
    run_dirs = [Path(arg) for arg in argv]
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] ptbjobs job: {', '.join(map(str, run_dirs))} on "
          f"{socket.gethostname()}, pid {os.getpid()}", flush=True)
    try:
        for run_dir in run_dirs:
            if not (run_dir / SPEC_FILE).is_file():
                raise ConfigError(None, f"{run_dir / SPEC_FILE} not found", "is RUN_DIR a run folder that ptbjobs submit wrote?")
        if len(run_dirs) == 1:
            run_job(run_dirs[0])
            return 0
        outcomes = run_fused(run_dirs, job_id)
        failed = [(path, outcome) for path, outcome in outcomes.items() if isinstance(outcome, BaseException)]
        for path, outcome in failed:
            print(f"ptbjobs: {path}: {error_line(outcome)}", file=sys.stderr, flush=True)
        return exit_code(failed[0][1]) if failed else 0
    except PtbjobsError as exc:
        print(f"ptbjobs: {'error: ' if exc.is_error else ''}{exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except ValueError as exc:  # a damaged spec.json
        print(f"ptbjobs: error: spec.json of {', '.join(map(str, run_dirs))}: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    defer_stop_signals()  # first: a signal may come while torch is still being imported
    sys.exit(main(sys.argv[1:]))
