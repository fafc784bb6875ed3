from __future__ import annotations

import io
import json
import time

import pytest

from ptbjobs.core import states
from ptbjobs.launch.status import _metrics_summary, collect, render_table, summary_line
from ptbjobs.train.run_dir import RunDir
from synthetic import make_sweep


@pytest.mark.parametrize("job, folder, shown", [
    (None, None, states.NOT_SUBMITTED),
    (states.PENDING, None, states.PENDING),
    (states.RUNNING, "RUNNING", states.RUNNING),
    (states.COMPLETED, "COMPLETED", states.COMPLETED),
    (states.FAILED, "DIVERGED", states.DIVERGED),  # the run folder knows better than the job
    (states.TIMEOUT, "INTERRUPTED", states.TIMEOUT),
    (states.CANCELLED, "INTERRUPTED", states.CANCELLED),
    (states.COMPLETED, "INTERRUPTED", states.FAILED),  # the job ended cleanly, the run did not finish
    (states.FAILED, "COMPLETED", states.COMPLETED),  # finished, whatever happened to the job after
])
def test_a_runs_state_merges_its_job_and_its_folder(job, folder, shown):
    assert states.run_state(job, folder) == shown


@pytest.mark.parametrize("raw, state", [("CANCELLED by 1000", "CANCELLED"), ("OUT_OF_ME+", "OUT_OF_MEMORY"),
                                        ("NODE_FAIL", "NODE_FAIL"), ("PENDING", "PENDING"), ("", "UNKNOWN")])
def test_slurm_state_words_are_normalised(raw, state):
    assert states.normalise_slurm_state(raw) == state


def test_status_of_a_synthetic_sweep_counts_every_state_and_summarises_metrics_exactly(tmp_path):
    sweep = make_sweep(tmp_path / "synthetic", runs=200)
    status = collect(sweep)
    assert len(status["runs"]) == 200
    assert set(status["summary"]) == {states.COMPLETED, states.FAILED, states.DIVERGED, states.PENDING}
    # synthetic RUNNING runs have no live process: they read FAILED, as a killed worker does
    for row in status["runs"]:
        records = RunDir(sweep.run_dir(row["key"])).read_metrics()
        epochs = [r for r in records if "epoch" in r]
        assert row["epoch"] == len(epochs)
        assert row["best_valid_ppl"] == (min(r["valid_ppl"] for r in epochs) if epochs else None)
        assert row["valid_ppl"] == (epochs[-1]["valid_ppl"] if epochs else None)
    text = render_table(status).plain
    assert len(text.splitlines()) == 3 + 200
    assert summary_line(status).startswith("200 runs: ")


@pytest.mark.parametrize("state, finished", [(states.COMPLETED, True), (states.TIMEOUT, True), (states.LOST, True),
                                             (states.RUNNING, False), (states.NOT_SUBMITTED, False),
                                             (states.UNKNOWN, False)])  # no answer: it may still run
def test_which_states_count_as_ended(state, finished):
    assert states.is_finished(state) is finished
    counted = summary_line({"runs": [{}, {}], "summary": {state: 1, states.FAILED: 1}})
    assert counted.endswith(f"({1 + finished} ended)")


def test_metrics_summary_of_a_missing_file_is_empty(tmp_path):
    assert _metrics_summary(RunDir(tmp_path)) == (0, None, None, None)


def test_a_local_job_whose_process_is_gone_reads_failed_or_cancelled_or_its_end(tmp_path):
    import json

    from ptbjobs.executors.local import job_state

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "L1.json").write_text(json.dumps({"job_id": "L1", "state": "RUNNING", "pid": None}))
    assert job_state(tmp_path, "L1") == states.FAILED  # killed or crashed without a word
    (jobs / "L1.cancel").touch()
    assert job_state(tmp_path, "L1") == states.CANCELLED  # killed by the cancel before it could save
    (jobs / "L1.end.json").write_text(json.dumps({"state": "COMPLETED"}))
    assert job_state(tmp_path, "L1") == states.COMPLETED  # what the worker wrote wins
    (jobs / "L2.json").write_text(json.dumps({"job_id": "L2", "state": "PENDING"}))
    assert job_state(tmp_path, "L2") == states.PENDING
    assert job_state(tmp_path, "L3") == states.UNKNOWN


def test_wait_returns_1_when_a_run_did_not_complete_and_0_when_all_did(tmp_path):
    import json

    from rich.console import Console

    from ptbjobs.launch.status import watch

    quiet = Console(file=io.StringIO())
    def end_every_job(sweep, state: str) -> None:
        for job in (sweep.path / "local" / "jobs").glob("L*.json"):
            if job.stem[1:].isdigit():
                (job.parent / f"{job.stem}.end.json").write_text(json.dumps({"state": state}))
                if state == states.COMPLETED:  # as a finished run leaves it: a final record, then the state
                    run = RunDir(sweep.run_dir(json.loads(job.read_text())["run"]))
                    epochs = [r for r in run.read_metrics() if not r.get("final")]
                    run.write_metrics(epochs + [{"final": True, "test_ppl": 100.0, "elapsed_s": 1.0}])
                    run.write_state(states.COMPLETED)

    mixed = make_sweep(tmp_path / "mixed", runs=40)
    end_every_job(mixed, states.CANCELLED)  # nothing left to wait for, and not all completed
    assert watch(mixed, quiet, until_done=True) == 1
    done = make_sweep(tmp_path / "done", runs=3)
    end_every_job(done, states.COMPLETED)
    assert watch(done, quiet, until_done=True) == 0


def test_a_new_attempt_drops_the_heartbeat_of_the_one_before(tmp_path, tiny_config):
    from ptbjobs.train.progress import ProgressFileReporter
    from ptbjobs.train.reporting import SilentReporter
    from ptbjobs.train.run_dir import PROGRESS_FILE, RunDir

    stale = tmp_path / PROGRESS_FILE
    stale.write_text('{"time": 0, "elapsed_s": 10}')  # written before the job was requeued
    ProgressFileReporter(tmp_path, SilentReporter()).start(tiny_config, RunDir(tmp_path), None)
    assert not stale.exists()


def damage(path, kind: str) -> None:
    """What a bad copy, a full disk or a hand edit leaves behind."""
    if kind == "not-json":
        path.write_text("{broken")
    elif kind == "cut-line":
        text = path.read_text()
        path.write_text(text[: len(text) - 25])
    elif kind == "wrong-shape":
        path.write_text("[1, 2]")


def test_a_damaged_file_marks_only_its_run_and_status_still_answers(tmp_path, capsys):
    import json
    import os

    from ptbjobs.cli import main
    from ptbjobs.executors.local import process_start

    sweep = make_sweep(tmp_path / "s", runs=40)
    before = {row["key"]: row["state"] for row in collect(sweep)["runs"]}
    completed = [key for key, state in before.items() if state == states.COMPLETED]
    broken_state, cut_metrics, garbled_metrics = completed[:3]
    damage(sweep.run_dir(broken_state) / "state.json", "not-json")
    damage(sweep.run_dir(cut_metrics) / "metrics.jsonl", "cut-line")
    lines = (sweep.run_dir(garbled_metrics) / "metrics.jsonl").read_text().splitlines()
    (sweep.run_dir(garbled_metrics) / "metrics.jsonl").write_text("\n".join(lines[:-1] + ['{"final": true}']) + "\n")
    # a run that is really running (this process stands in for its worker), with a heartbeat of the wrong shape
    running = completed[3]
    for path in [p for p in (sweep.path / "local" / "jobs").glob("L*.json") if p.stem[1:].isdigit()]:
        record = json.loads(path.read_text())
        if record["run"] == running:
            (path.parent / f"{path.stem}.end.json").unlink(missing_ok=True)
            path.write_text(json.dumps({**record, "state": "RUNNING", "pid": os.getpid(),
                                        "pid_start": process_start(os.getpid())}))
    RunDir(sweep.run_dir(running)).write_state(states.RUNNING)
    damage(sweep.run_dir(running) / "progress.json", "wrong-shape")

    status = collect(sweep)
    rows = {row["key"]: row for row in status["runs"]}
    assert rows[broken_state]["state"] == rows[cut_metrics]["state"] == rows[garbled_metrics]["state"] == states.DAMAGED
    assert rows[broken_state]["problem"].startswith(f"{sweep.run_dir(broken_state) / 'state.json'} is not valid JSON")
    assert rows[cut_metrics]["problem"] == f"{sweep.run_dir(cut_metrics) / 'metrics.jsonl'} is cut short (its last line is incomplete)"
    assert "metrics.jsonl" in rows[garbled_metrics]["problem"]
    assert rows[running]["state"] == states.RUNNING and rows[running]["eta_s"] is None
    assert rows[running]["problem"] == f"{sweep.run_dir(running) / 'progress.json'} is not a heartbeat record"
    damaged = {broken_state, cut_metrics, garbled_metrics, running}
    assert {k: r["state"] for k, r in rows.items() if k not in damaged} == {k: s for k, s in before.items() if k not in damaged}
    assert all(rows[key]["problem"] is None for key in rows if key not in damaged)

    assert main(["status", "--sweep-dir", str(sweep.path)]) == 0
    shown = capsys.readouterr().out
    assert f"note: {broken_state}: {sweep.run_dir(broken_state) / 'state.json'} is not valid JSON" in shown
    assert f"`ptbjobs retry --run {cut_metrics}` resumes it from its last checkpoint" in shown
    assert main(["status", "--sweep-dir", str(sweep.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"][states.DAMAGED] == 3


def test_evaluation_and_checkpoint_writes_keep_a_runs_heartbeat_fresh(tmp_path, tiny_corpus, tiny_config):
    from ptbjobs.train.progress import ProgressFileReporter
    from ptbjobs.train.reporting import SilentReporter
    from ptbjobs.train.runner import run_training

    seen = []

    class Recording(SilentReporter):
        def progress(self, progress):
            seen.append("progress")

        def alive(self):
            seen.append("alive")

        def epoch_end(self, record):
            seen.append("epoch_end")

    run_training(tiny_config, tmp_path / "run", tiny_corpus, reporter=Recording(), handle_signals=False)
    first_epoch = seen[: seen.index("epoch_end")]
    last_progress = max(i for i, what in enumerate(first_epoch) if what == "progress") if "progress" in first_epoch else -1
    assert first_epoch[last_progress + 1:].count("alive") >= 3  # evaluating, then around the checkpoint

    beat = ProgressFileReporter(tmp_path / "run", SilentReporter(), every_s=0.0)
    from ptbjobs.train.reporting import Progress

    beat.progress(Progress(epoch=1, chunk=5, chunks=9, lr=1.0, train_ppl=300.0, tokens_per_s=100.0, elapsed_s=4.0))
    before = json.loads((tmp_path / "run" / "progress.json").read_text())
    time.sleep(0.01)
    beat.alive()
    after = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert after["time"] > before["time"] and {**after, "time": 0} == {**before, "time": 0}
