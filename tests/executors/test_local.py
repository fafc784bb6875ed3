"""The local executor for real: detached workers, the concurrency limit, kill -9, cancel, retry."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_MODEL_TOML
from helpers import all_ended, assert_same_run, wait_until
from ptbjobs.core import states
from ptbjobs.core.atomic import atomic_write_json
from ptbjobs.core.errors import ConfigError
from ptbjobs.executors import local, local_supervisor
from ptbjobs.executors.local import LocalExecutor
from ptbjobs.launch.cancel import cancel
from ptbjobs.launch.status import collect
from ptbjobs.launch.submit import SKIP_COMPLETED, retry, submit
from ptbjobs.sweep.folder import Sweep
from ptbjobs.sweep.grid import Resources, load_grid
from ptbjobs.train.run_dir import RunDir
from ptbjobs.train.runner import run_training

GRID = '''
name = "tiny"
[defaults]
''' + TINY_MODEL_TOML + '''epochs = {epochs}
decay_after = 1
checkpoint_every_min = 0
checkpoint_every_steps = 10
[axes]
cell = ["lstm", "gru"]
dropout = [0.0, 0.2]
seed = [1]
'''


@pytest.fixture
def grid_file(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(GRID.format(epochs=2))
    return path


def test_a_small_grid_runs_to_completion_in_detached_workers_within_the_limit(tmp_path, grid_file, tiny_corpus, capsys):
    sweep = Sweep(tmp_path / "sweep")
    grid = load_grid(grid_file)
    submit(grid, sweep, LocalExecutor(max_parallel=2), data_dir=tiny_corpus)
    status = wait_until(lambda: all_ended(sweep))
    assert [r["state"] for r in status["runs"]] == [states.COMPLETED] * 4
    for row in status["runs"]:
        assert row["epoch"] == 2 and row["test_ppl"] is not None
        assert (sweep.run_dir(row["key"]) / "logs" / f"{row['job_id']}.log").read_text().count("epoch 2/2") == 1
    # never more than 2 at once: compare the jobs' [started, ended] intervals
    jobs = sweep.path / "local" / "jobs"
    spans = [(json.loads((jobs / f"{r['job_id']}.json").read_text())["started"],
              json.loads((jobs / f"{r['job_id']}.end.json").read_text())["ended"]) for r in status["runs"]]
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap == 2
    # and submitting the same grid again submits nothing
    again = submit(grid, sweep, LocalExecutor(max_parallel=2), data_dir=tiny_corpus)
    assert {p.action for p in again} == {SKIP_COMPLETED}
    assert all(len(entry["jobs"]) == 1 for entry in sweep.read_manifest()["runs"].values())
    # the logs command shows every attempt's output
    from ptbjobs.cli import main

    assert main(["logs", "gru-d0.2-s1", "--sweep-dir", str(sweep.path)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("==> attempt L") and "epoch 2/2: lr" in shown and "done: best valid ppl" in shown
    # and the report of this real sweep runs end to end
    from ptbjobs.analysis.report import make_report

    made = make_report(sweep)
    assert list(made.table["variant"]) == ["LSTM, dropout 0", "LSTM, dropout 0.2", "GRU, dropout 0", "GRU, dropout 0.2"]
    assert list(made.table["seeds"]) == [1, 1, 1, 1] and made.incomplete == []
    finals = {row["key"]: row["test_ppl"] for row in status["runs"]}
    assert made.table.iloc[0]["test_ppl_mean"] == finals["lstm-d0-s1"]
    assert (sweep.path / "figures" / "overview.png").stat().st_size > 10_000


def submit_one_run(tmp_path, tiny_corpus, cell: str, dropout: float, epochs: int):
    """A one-run sweep, submitted and waited for until its first checkpoint exists."""
    grid_path = tmp_path / "one.toml"
    grid_path.write_text(GRID.format(epochs=epochs).replace('cell = ["lstm", "gru"]', f'cell = ["{cell}"]')
                         .replace("dropout = [0.0, 0.2]", f"dropout = [{dropout}]"))
    grid = load_grid(grid_path)
    sweep = Sweep(tmp_path / "sweep")
    submit(grid, sweep, LocalExecutor(max_parallel=1), data_dir=tiny_corpus)
    run_dir = sweep.run_dir(grid.runs[0].key)
    wait_until(lambda: list((run_dir / "checkpoints").glob("ckpt-*.pt")), every_s=0.02)
    return grid, sweep, run_dir


def test_a_worker_killed_with_sigkill_shows_failed_and_retry_completes_it_identically(tmp_path, tiny_corpus):
    grid, sweep, run_dir = submit_one_run(tmp_path, tiny_corpus, "lstm", 0.2, epochs=4)
    key = grid.runs[0].key
    record = json.loads((sweep.path / "local" / "jobs" / "L1.json").read_text())
    os.kill(record["pid"], signal.SIGKILL)
    status = wait_until(lambda: all_ended(sweep))
    assert status["runs"][0]["state"] == states.FAILED
    assert retry(sweep).submitted == {key: "L2"}
    status = wait_until(lambda: all_ended(sweep))
    assert status["runs"][0]["state"] == states.COMPLETED and status["runs"][0]["attempts"] == 2
    reference = tmp_path / "reference"
    run_training(grid.runs[0].config, reference, tiny_corpus, handle_signals=False)
    assert_same_run(reference, run_dir)


def test_cancel_stops_a_running_run_and_retry_finishes_it(tmp_path, tiny_corpus):
    grid, sweep, run_dir = submit_one_run(tmp_path, tiny_corpus, "gru", 0.0, epochs=30)
    assert cancel(sweep) == [grid.runs[0].key]
    status = wait_until(lambda: all_ended(sweep))
    assert status["runs"][0]["state"] == states.CANCELLED
    assert RunDir(run_dir).read_state()["state"] == "INTERRUPTED"  # it saved its state on the way out
    last_line = _log_text(run_dir, "L1").splitlines()[-1]
    assert re.fullmatch(r"ptbjobs job L1: CANCELLED \(stopped by SIGTERM at step \d+, state saved\); `ptbjobs retry` resumes it",
                        last_line), last_line
    retry(sweep)
    assert "resuming from" in wait_until(lambda: _log_text(run_dir, "L2") if "resuming" in _log_text(run_dir, "L2") else None)
    cancel(sweep)  # no need to train 30 epochs here
    wait_until(lambda: all_ended(sweep))


def test_a_cancelled_job_that_does_not_stop_is_killed_after_the_wait_and_retry_resumes_it(tmp_path, tiny_corpus,
                                                                                        monkeypatch):
    monkeypatch.setenv("PTBJOBS_KILL_WAIT_S", "2")  # read by cancel, which gives the job that long
    grid, sweep, run_dir = submit_one_run(tmp_path, tiny_corpus, "lstm", 0.2, epochs=4)
    record = json.loads((sweep.path / "local" / "jobs" / "L1.json").read_text())
    os.kill(record["pid"], signal.SIGSTOP)  # a stuck worker: it cannot act on the cancel's SIGTERM
    cancelled_at = time.monotonic()
    assert cancel(sweep) == [grid.runs[0].key]
    assert collect(sweep)["runs"][0]["state"] == states.RUNNING
    marker = sweep.path / "local" / "jobs" / "L1.cancel"
    first = marker.read_text()
    monkeypatch.setenv("PTBJOBS_KILL_WAIT_S", "3600")
    cancel(sweep)  # cancelled again while it waits: neither restarts nor lengthens the wait
    assert marker.read_text() == first
    status = wait_until(lambda: all_ended(sweep), timeout_s=60, every_s=0.05)
    assert time.monotonic() - cancelled_at >= 2
    assert status["runs"][0]["state"] == states.CANCELLED
    end_path = sweep.path / "local" / "jobs" / "L1.end.json"  # written by the supervisor just after the kill
    end = json.loads(wait_until(lambda: end_path.exists() and end_path.read_text(), timeout_s=10, every_s=0.05))
    assert end["exit_code"] == -signal.SIGKILL and end["message"] == "killed: still running 2 s after the cancel"
    assert not local.is_alive(record)
    assert _log_text(run_dir, "L1").endswith("ptbjobs job L1: killed: still running 2 s after the cancel\n")
    # what it had saved is intact: the retried run ends as if it had never been stopped
    retry(sweep)
    status = wait_until(lambda: all_ended(sweep))
    assert status["runs"][0]["state"] == states.COMPLETED and status["runs"][0]["attempts"] == 2
    reference = tmp_path / "reference"
    run_training(grid.runs[0].config, reference, tiny_corpus, handle_signals=False)
    assert_same_run(reference, run_dir)


def _log_text(run_dir: Path, job_id: str) -> str:
    path = run_dir / "logs" / f"{job_id}.log"
    return path.read_text() if path.exists() else ""


def test_two_concurrent_submits_of_one_grid_start_each_run_once(tmp_path, grid_file, tiny_corpus):
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "ptbjobs", "submit", "--grid", str(grid_file), "--sweep-dir", str(sweep_dir),
               "--data-dir", str(tiny_corpus), "--executor", "local", "--max-parallel", "2"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for process in (first, second):
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    manifest = Sweep(sweep_dir).read_manifest()
    assert sorted(len(entry["jobs"]) for entry in manifest["runs"].values()) == [1, 1, 1, 1]
    assert sorted(p.name for p in (sweep_dir / "local" / "jobs").glob("L?.json")) == ["L1.json", "L2.json", "L3.json", "L4.json"]
    wait_until(lambda: all_ended(Sweep(sweep_dir)))


def test_a_sweep_keeps_the_last_max_parallel_given_until_another_is_given(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "ensure_supervisor", lambda sweep: None)  # queue only: no processes
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    sweep = Sweep(tmp_path / "sweep")
    settings = sweep.path / "local" / "settings.json"
    resources = Resources()

    LocalExecutor().submit(sweep, ["a"], resources)
    assert json.loads(settings.read_text())["max_parallel"] == 4  # none given: 8 cores / 2 per run
    LocalExecutor(3).submit(sweep, ["b"], resources)
    assert json.loads(settings.read_text())["max_parallel"] == 3
    executor = LocalExecutor()
    executor.submit(sweep, ["c"], resources)  # a resume or an added run without the flag
    assert json.loads(settings.read_text())["max_parallel"] == 3 and executor.parallel_in_force == 3
    LocalExecutor(1).submit(sweep, ["d"], resources)
    assert json.loads(settings.read_text())["max_parallel"] == 1


def test_after_a_narrower_limit_a_new_job_takes_no_slot_that_a_running_job_maps_to(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "ensure_supervisor", lambda sweep: None)  # queue only
    sweep = Sweep(tmp_path / "sweep")
    folder = sweep.path / "local"
    LocalExecutor(4).submit(sweep, ["a", "b", "c", "d", "e"], Resources())
    started: dict[str, int] = {}

    def start_worker(sweep, folder, record, slot, settings):  # the worker is this process: alive
        started[record["job_id"]] = slot
        running = {**record, "state": states.RUNNING, "pid": os.getpid(),
                   "pid_start": local.process_start(os.getpid()), "slot": slot}
        atomic_write_json(local.job_path(folder, record["job_id"]), running)
        return running

    monkeypatch.setattr(local_supervisor, "_start_worker", start_worker)
    record = {n: json.loads(local.job_path(folder, f"L{n}").read_text()) for n in range(1, 6)}
    queue = local_supervisor._Queue(folder)
    assert [local_supervisor._launch(sweep, folder, queue, record[n]) for n in range(1, 6)] == [True] * 4 + [False]
    assert started == {"L1": 0, "L2": 1, "L3": 2, "L4": 3}
    LocalExecutor(2).apply_max_parallel(sweep)
    for job_id in ("L1", "L2"):
        local.write_end(folder, job_id, states.COMPLETED, 0, "")
    assert local_supervisor._launch(sweep, folder, queue, record[5]) is False  # 2 still run: the new limit
    local.write_end(folder, "L4", states.COMPLETED, 0, "")
    # L3 runs in slot 2, which is slot 0 modulo the limit (with 2 GPUs, GPU 0): L5 takes slot 1
    assert local_supervisor._launch(sweep, folder, queue, record[5]) is True and started["L5"] == 1
    with pytest.raises(ConfigError, match="has no runs on the local executor"):
        LocalExecutor(2).apply_max_parallel(Sweep(tmp_path / "never-local"))


def test_the_supervisor_reads_only_the_files_of_jobs_not_ended_and_finds_new_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "ensure_supervisor", lambda sweep: None)  # queue only
    sweep = Sweep(tmp_path / "sweep")
    folder = sweep.path / "local"
    LocalExecutor(1).submit(sweep, [f"run{n}" for n in range(1, 7)], Resources())
    for job_id in ("L1", "L2", "L3", "L4"):
        local.write_end(folder, job_id, states.COMPLETED, 0, "")
    queue = local_supervisor._Queue(folder)
    read = []
    real_job_files = local_supervisor.job_files
    monkeypatch.setattr(local_supervisor, "job_files", lambda f, job_id: read.append(job_id) or real_job_files(f, job_id))
    assert [r["job_id"] for r in queue.look()[1]] == ["L5", "L6"]
    local.write_end(folder, "L5", states.CANCELLED, None, "")
    queue.look()
    LocalExecutor(1).submit(sweep, ["run7"], Resources())  # queued while the supervisor runs
    read.clear()
    running, pending = queue.look()
    assert [r["job_id"] for r in pending] == ["L6", "L7"] and not running
    # the new job is read; neither the four that ended before it started nor L5 (L6, known to be
    # queued, only has its end record looked for)
    assert "L7" in read and not set(read) & {"L1", "L2", "L3", "L4", "L5"}


def test_a_bad_kill_wait_stops_cancel_before_it_cancels_anything(tmp_path, tiny_corpus, monkeypatch, capsys):
    from ptbjobs.cli import main

    monkeypatch.setattr(local, "ensure_supervisor", lambda sweep: None)  # queue only
    grid_path = tmp_path / "one.toml"
    grid_path.write_text(GRID.format(epochs=1).replace('cell = ["lstm", "gru"]', 'cell = ["lstm"]'))
    sweep = Sweep(tmp_path / "sweep")
    submit(load_grid(grid_path), sweep, LocalExecutor(1), data_dir=tiny_corpus)
    monkeypatch.setenv("PTBJOBS_KILL_WAIT_S", "soon")
    assert main(["cancel", "--sweep-dir", str(sweep.path)]) == 2
    assert capsys.readouterr().err.strip() == ("ptbjobs: error: PTBJOBS_KILL_WAIT_S: must be a number of seconds >= 0, "
                                               "got 'soon' (unset it for the default of 120 s)")
    assert [r["state"] for r in collect(sweep)["runs"]] == [states.PENDING, states.PENDING]


def test_retry_resumes_at_the_sweeps_max_parallel_or_at_the_one_it_is_given(tmp_path, tiny_corpus, capsys):
    from ptbjobs.cli import main

    grid_path = tmp_path / "two.toml"
    grid_path.write_text(GRID.format(epochs=200).replace("dropout = [0.0, 0.2]", "dropout = [0.0]"))
    grid = load_grid(grid_path)
    sweep = Sweep(tmp_path / "sweep")
    jobs = sweep.path / "local" / "jobs"

    def running_and_pending() -> tuple[int, int]:
        found = [local.job_state(sweep.path / "local", p.stem) for p in jobs.glob("L*.json") if p.stem[1:].isdigit()]
        return found.count(states.RUNNING), found.count(states.PENDING)

    def cancel_all() -> None:
        cancel(sweep)
        wait_until(lambda: all_ended(sweep))

    submit(grid, sweep, LocalExecutor(max_parallel=2), data_dir=tiny_corpus)
    wait_until(lambda: running_and_pending() == (2, 0))
    cancel_all()
    assert main(["retry", "--sweep-dir", str(sweep.path)]) == 0
    assert "local executor: 2 at once" in capsys.readouterr().out
    wait_until(lambda: running_and_pending() == (2, 0))  # both resumed side by side, as submitted
    cancel_all()
    assert main(["retry", "--max-parallel", "1", "--sweep-dir", str(sweep.path)]) == 0
    assert "local executor: 1 at once" in capsys.readouterr().out
    wait_until(lambda: running_and_pending() == (1, 1))
    time.sleep(2)  # several supervisor polls: the second stays queued while the first trains
    assert running_and_pending() == (1, 1)
    cancel_all()


def test_max_parallel_given_when_nothing_is_started_changes_the_width_of_the_running_sweep(tmp_path, tiny_corpus, capsys):
    from ptbjobs.cli import main

    grid_path = tmp_path / "four.toml"
    grid_path.write_text(GRID.format(epochs=200))
    sweep = Sweep(tmp_path / "sweep")
    folder = sweep.path / "local"
    submit(load_grid(grid_path), sweep, LocalExecutor(max_parallel=1), data_dir=tiny_corpus)

    def running_and_pending() -> tuple[int, int]:
        found = [local.job_state(folder, f"L{n}") for n in range(1, 5)]
        return found.count(states.RUNNING), found.count(states.PENDING)

    wait_until(lambda: running_and_pending() == (1, 3))
    # every run is queued or running: this submit starts nothing, and widens the queue
    assert main(["submit", "--grid", str(grid_path), "--executor", "local", "--max-parallel", "3",
                 "--sweep-dir", str(sweep.path), "--data-dir", str(tiny_corpus)]) == 0
    assert "submitted 0 of 4 runs" in (shown := capsys.readouterr().out) and "(local, 3 at once)" in shown
    wait_until(lambda: running_and_pending() == (3, 1))
    # narrowed by a retry with nothing to retry: the running go on, the queued one waits
    assert main(["retry", "--max-parallel", "1", "--sweep-dir", str(sweep.path)]) == 0
    shown = capsys.readouterr().out
    assert "nothing to retry" in shown and "local executor: 1 at once" in shown
    cancel(sweep, ["lstm-d0-s1"])  # the job in slot 0: a free slot, but 2 still run
    wait_until(lambda: running_and_pending() == (2, 1))
    time.sleep(2)  # several supervisor polls
    assert running_and_pending() == (2, 1)
    cancel(sweep)
    wait_until(lambda: all_ended(sweep))


def _with_time_limit(grid, minutes: float, max_requeues: int):
    """The grid with a sub-minute time limit, which the grid file cannot state (whole minutes for
    Slurm), so that a test sees several limits in a few seconds."""
    import dataclasses

    return dataclasses.replace(grid, resources=dataclasses.replace(grid.resources, timeout_min=minutes,
                                                                   max_requeues=max_requeues))


def test_a_time_limit_requeues_the_run_in_place_and_it_ends_as_if_never_stopped(tmp_path, tiny_corpus, capsys):
    grid_path = tmp_path / "one.toml"
    grid_path.write_text(GRID.format(epochs=6).replace('cell = ["lstm", "gru"]', 'cell = ["lstm"]')
                         .replace("dropout = [0.0, 0.2]", "dropout = [0.2]")
                         .replace("checkpoint_every_steps = 10", "checkpoint_every_steps = 0"))  # saves only when stopped
    grid = _with_time_limit(load_grid(grid_path), minutes=0.01, max_requeues=1000)  # 0.6 s
    sweep = Sweep(tmp_path / "sweep")
    submit(grid, sweep, LocalExecutor(max_parallel=1), data_dir=tiny_corpus)
    status = wait_until(lambda: all_ended(sweep))
    row = status["runs"][0]
    log = _log_text(sweep.run_dir(row["key"]), "L1")
    requeues = log.count("requeued in place")
    assert requeues >= 2, log  # the run is long enough for several limits
    # one job, started 1 + requeues times: each start counts as a try, and logs shows each
    assert row["state"] == states.COMPLETED and row["attempts"] == requeues + 1
    from ptbjobs.cli import main

    assert main(["logs", row["key"], "--sweep-dir", str(sweep.path)]) == 0
    shown = capsys.readouterr().out
    assert shown.count("==> attempt L1 (local), start ") == requeues + 1
    assert f"start {requeues + 1} of {requeues + 1}" in shown and "done: best valid ppl" in shown.split(", start")[-1]
    assert "resuming from" in log and log.count("state saved); requeued in place") >= 1  # stopped in training
    reference = tmp_path / "reference"
    run_training(grid.runs[0].config, reference, tiny_corpus, handle_signals=False)
    assert_same_run(reference, sweep.run_dir(row["key"]))


def test_after_its_last_requeue_a_timed_out_run_ends_timeout_and_retry_resumes_it(tmp_path, tiny_corpus):
    grid_path = tmp_path / "one.toml"
    grid_path.write_text(GRID.format(epochs=500).replace('cell = ["lstm", "gru"]', 'cell = ["gru"]')
                         .replace("dropout = [0.0, 0.2]", "dropout = [0.0]")
                         .replace("checkpoint_every_steps = 10", "checkpoint_every_steps = 0"))
    grid = _with_time_limit(load_grid(grid_path), minutes=0.05, max_requeues=1)  # 3 s: the second attempt trains
    sweep = Sweep(tmp_path / "sweep")
    submit(grid, sweep, LocalExecutor(max_parallel=1), data_dir=tiny_corpus)
    status = wait_until(lambda: all_ended(sweep))
    key = status["runs"][0]["key"]
    assert status["runs"][0]["state"] == states.TIMEOUT
    log = _log_text(sweep.run_dir(key), "L1")
    assert log.count("requeued in place (1 of 1)") == 1 and log.count("requeued in place") == 1, log
    assert log.splitlines()[-1].startswith("ptbjobs job L1: TIMEOUT (stopped by SIGUSR2 at step"), log
    assert RunDir(sweep.run_dir(key)).read_state()["state"] == "INTERRUPTED"  # saved, not killed
    assert retry(sweep).submitted == {key: "L2"}
    assert "resuming from" in wait_until(lambda: _log_text(sweep.run_dir(key), "L2") if "resuming" in _log_text(sweep.run_dir(key), "L2") else None)
    cancel(sweep)
    assert wait_until(lambda: all_ended(sweep))["runs"][0]["state"] == states.CANCELLED


@pytest.mark.parametrize("damaged_file, damage", [("state.json", "{broken"), ("metrics.jsonl", None)],
                         ids=["state-not-json", "metrics-cut"])
def test_a_finished_run_with_a_damaged_file_is_not_taken_for_finished_and_retry_restores_it(
        tmp_path, tiny_corpus, damaged_file, damage):
    from helpers import comparable

    grid, sweep, run_dir = submit_one_run(tmp_path, tiny_corpus, "gru", 0.0, epochs=2)
    assert [r["state"] for r in wait_until(lambda: all_ended(sweep))["runs"]] == [states.COMPLETED]
    # the job too: a damaged folder of a job still running (its worker just done) is left to it
    wait_until(lambda: not states.is_active(LocalExecutor(1).query(sweep, ["L1"]).states["L1"]))
    finished = RunDir(run_dir).read_metrics()
    path = run_dir / damaged_file
    path.write_text(damage if damage is not None else path.read_text()[:-40])  # a bad copy, a full disk

    assert [r["state"] for r in collect(sweep)["runs"]] == [states.DAMAGED]
    assert [(p.spec.key, p.action) for p in submit(grid, sweep, LocalExecutor(1), data_dir=tiny_corpus, dry_run=True)] \
        == [(grid.runs[0].key, "resume")]
    assert retry(sweep).submitted == {grid.runs[0].key: "L2"}
    assert [r["state"] for r in wait_until(lambda: all_ended(sweep))["runs"]] == [states.COMPLETED]
    assert comparable(RunDir(run_dir).read_metrics()) == comparable(finished)  # written anew from the checkpoint
    assert "resuming from the last checkpoint, which writes it anew" in (run_dir / "logs" / "L2.log").read_text()


def test_a_killed_supervisor_is_started_again_by_the_next_command_and_the_queue_drains(tmp_path, grid_file,
                                                                                        tiny_corpus):
    grid_file.write_text(GRID.format(epochs=1))
    sweep = Sweep(tmp_path / "sweep")
    submit(load_grid(grid_file), sweep, LocalExecutor(max_parallel=1), data_dir=tiny_corpus)
    supervisor = json.loads((sweep.path / "local" / "supervisor.json").read_text())
    wait_until(lambda: collect(sweep)["summary"].get(states.RUNNING) == 1, every_s=0.05)
    os.kill(supervisor["pid"], signal.SIGKILL)  # the worker goes on: it leads a session of its own
    wait_until(lambda: not local.is_alive(supervisor), every_s=0.05)
    status = [sys.executable, "-m", "ptbjobs", "status", "--sweep-dir", str(sweep.path)]  # as a user runs it
    err = subprocess.run(status, capture_output=True, text=True, check=True).stderr
    assert err == (f"ptbjobs: WARNING: {sweep.path}: the local executor's supervisor had stopped with 3 run(s) "
                   "queued; started it again\n")
    finished = wait_until(lambda: all_ended(sweep))
    assert [row["state"] for row in finished["runs"]] == [states.COMPLETED] * 4
    assert subprocess.run(status, capture_output=True, text=True, check=True).stderr == ""  # nothing queued: nothing said


def test_a_stopped_worker_reads_stalled_and_running_again_once_continued_and_cancel_acts_on_it(
        tmp_path, tiny_corpus, monkeypatch):
    grid_path = tmp_path / "stall.toml"
    grid_path.write_text(GRID.format(epochs=200).replace('cell = ["lstm", "gru"]', 'cell = ["lstm"]')
                         .replace("dropout = [0.0, 0.2]", "dropout = [0.0]") + "[resources]\nstall_after_min = 0.2\n")
    sweep = Sweep(tmp_path / "sweep")
    submit(load_grid(grid_path), sweep, LocalExecutor(max_parallel=1), data_dir=tiny_corpus)
    key = load_grid(grid_path).runs[0].key

    def state() -> str:
        return collect(sweep)["runs"][0]["state"]

    wait_until(lambda: (sweep.run_dir(key) / "progress.json").exists() and state() == states.RUNNING, every_s=0.1)
    pid = json.loads((sweep.path / "local" / "jobs" / "L1.json").read_text())["pid"]
    try:
        os.kill(pid, signal.SIGSTOP)  # as a hung read of a dead filesystem would hold it
        wait_until(lambda: state() == states.STALLED, timeout_s=60, every_s=0.5)
        assert collect(sweep)["runs"][0]["eta_s"] is None
        os.kill(pid, signal.SIGCONT)
        wait_until(lambda: state() == states.RUNNING, timeout_s=30, every_s=0.5)  # the next heartbeat says so
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: state() == states.STALLED, timeout_s=60, every_s=0.5)
        monkeypatch.setenv("PTBJOBS_KILL_WAIT_S", "1")
        assert cancel(sweep) == [key]  # a stalled run is still its job's: cancel acts on it as on a running one
        assert [row["state"] for row in wait_until(lambda: all_ended(sweep))["runs"]] == [states.CANCELLED]
    finally:  # never leave a 200-epoch worker behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _queued_sweep(tmp_path: Path, grid_file: Path, tiny_corpus: Path, monkeypatch) -> Sweep:
    """A sweep of 4 local runs, queued and not started (no supervisor)."""
    sweep = Sweep(tmp_path / "sweep")
    with monkeypatch.context() as patched:
        patched.setattr(local, "ensure_supervisor", lambda sweep: False)
        submit(load_grid(grid_file), sweep, LocalExecutor(max_parallel=1), data_dir=tiny_corpus)
    return sweep


def test_a_job_running_on_another_host_shows_running_and_is_neither_retried_nor_cancelled_from_here(
        tmp_path, grid_file, tiny_corpus, monkeypatch, capsys):
    sweep = _queued_sweep(tmp_path, grid_file, tiny_corpus, monkeypatch)
    jobs = sweep.path / "local" / "jobs"
    # what the supervisor on another login node sharing the filesystem writes when it starts L1:
    # a process that does not exist here
    record = json.loads((jobs / "L1.json").read_text())
    atomic_write_json(jobs / "L1.json", {**record, "state": states.RUNNING, "host": "other-node", "pid": _dead_pid(),
                                         "pid_start": 1, "slot": 0, "started": time.time()})
    atomic_write_json(sweep.path / "local" / "supervisor.json", {"host": "other-node", "pid": 1, "pid_start": 1})
    status = collect(sweep)
    assert [r["state"] for r in status["runs"]] == [states.RUNNING] + [states.PENDING] * 3
    assert "L1 running on other-node (cannot check from here: shown as last recorded)" in status["notes"]
    assert retry(sweep).submitted == {}
    from ptbjobs.cli import main

    assert main(["cancel", "--sweep-dir", str(sweep.path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "job L1 is running on other-node" in err and "run `ptbjobs cancel` on other-node" in err
    assert not list(jobs.glob("*.cancel")) and not list(jobs.glob("*.end.json"))  # nothing cancelled at all
    assert not (sweep.path / "local" / "supervisor.log").exists()  # the other host's supervisor serves the queue


def test_a_queue_whose_supervisor_on_another_host_stopped_beating_is_taken_over_here(
        tmp_path, grid_file, tiny_corpus, monkeypatch):
    grid_file.write_text(GRID.format(epochs=1))
    sweep = _queued_sweep(tmp_path, grid_file, tiny_corpus, monkeypatch)
    supervisor = sweep.path / "local" / "supervisor.json"
    atomic_write_json(supervisor, {"host": "other-node", "pid": 1, "pid_start": 1, "started": time.time()})
    assert collect(sweep)["summary"] == {states.PENDING: 4}
    assert json.loads(supervisor.read_text())["host"] == "other-node"  # alive, as far as anyone here can tell
    old = time.time() - 4 * local.SUPERVISOR_HEARTBEAT_S
    os.utime(supervisor, (old, old))  # three beats missed: it died with its host
    collect(sweep)
    assert json.loads(supervisor.read_text())["host"] == local.this_host()
    assert [r["state"] for r in wait_until(lambda: all_ended(sweep))["runs"]] == [states.COMPLETED] * 4


def test_a_job_ending_on_an_error_the_user_can_act_on_says_its_one_line_in_the_log(tmp_path, tiny_corpus):
    grid_path = tmp_path / "one.toml"
    grid_path.write_text(GRID.format(epochs=200).replace('cell = ["lstm", "gru"]', 'cell = ["lstm"]')
                         .replace("dropout = [0.0, 0.2]", "dropout = [0.0]"))
    grid = load_grid(grid_path)
    sweep = Sweep(tmp_path / "sweep")
    submit(grid, sweep, LocalExecutor(max_parallel=1), data_dir=tiny_corpus)
    key = grid.runs[0].key
    wait_until(lambda: list((sweep.run_dir(key) / "checkpoints").glob("ckpt-*.pt")), every_s=0.1)
    cancel(sweep)
    wait_until(lambda: all_ended(sweep))
    with open(tiny_corpus / "ptb.train.txt", "a") as train:
        train.write(" w1 w2 w3\n")  # the data changed under the run: its resume refuses
    assert retry(sweep).submitted == {key: "L2"}
    assert wait_until(lambda: all_ended(sweep))["runs"][0]["state"] == states.FAILED
    log = _log_text(sweep.run_dir(key), "L2")
    assert "ptbjobs: error: data file" in log and "changed since this run started" in log and "Traceback" not in log


def test_a_supervisor_whose_sweep_folder_was_deleted_leaves(tmp_path):
    import shutil

    from synthetic import make_sweep

    sweep = make_sweep(tmp_path / "s", runs=4, mix={"pending": 1})  # queued jobs and no slot: it would wait for ever
    assert local.ensure_supervisor(sweep)
    pid = json.loads((sweep.path / "local" / local.SUPERVISOR_FILE).read_text())["pid"]
    time.sleep(1)
    assert local.is_alive(json.loads((sweep.path / "local" / local.SUPERVISOR_FILE).read_text()))
    shutil.rmtree(sweep.path)
    wait_until(lambda: _exited(pid), timeout_s=10, every_s=0.1)


def _exited(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # this test's own child: reaped here
    except ChildProcessError:
        return True
    return finished == pid
