"""The Slurm executor against fakes at the process boundary: sbatch, sacct, squeue, scontrol and
scancel replaced by scripts on PATH that answer what the real ones answered on a one-node cluster
(slurm/up.sh, Slurm 22.05), and record how they were called."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from conftest import TINY_MODEL_TOML
from ptbjobs.cli import main
from ptbjobs.core import states
from ptbjobs.core.errors import ConfigError, PtbjobsError
from ptbjobs.executors import slurm_answers, slurm_limits
from ptbjobs.executors import slurm_commands as slurm
from ptbjobs.executors.base import PartialSubmission
from ptbjobs.executors.slurm import SlurmExecutor, sbatch_parameters
from ptbjobs.launch.executor_choice import get_executor
from ptbjobs.launch.submit import SKIP_UNKNOWN, _action
from ptbjobs.sweep.folder import Sweep
from ptbjobs.sweep.grid import Resources

# Recorded from the real cluster: an array of 6 (2 at a time) a few seconds in, a single job
# cancelled, and accounting's stale line for the array's pending remainder.
SACCT_ARRAY = """8_0|COMPLETED
8_1|COMPLETED
8_2|RUNNING
8_3|RUNNING
8_[2-5%2]|PENDING
3|CANCELLED by 0
"""
SACCT_DOWN = ("sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection to "
              "host:localhost:6819: Connection refused\nsacct: error: Sending PersistInit msg: Connection refused\n"
              "sacct: error: Problem talking to the database: Connection refused\n")
SQUEUE_DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
SBATCH_BAD_PARTITION = ("sbatch: error: invalid partition specified: nope\n"
                        "sbatch: error: Batch job submission failed: Invalid partition name specified\n")


def test_sacct_lines_become_one_state_per_job_and_array_task():
    found = slurm.parse_sacct(SACCT_ARRAY)
    assert found == {"8_0": "COMPLETED", "8_1": "COMPLETED", "8_2": "RUNNING", "8_3": "RUNNING",
                     "8_4": "PENDING", "8_5": "PENDING", "3": "CANCELLED"}


def test_array_ranges_expand_with_lists_and_parallelism_limits():
    assert slurm.expand_job_ids("12_[0-2,7,9-10%4]") == ["12_0", "12_1", "12_2", "12_7", "12_9", "12_10"]
    assert slurm.expand_job_ids("12_3") == ["12_3"]
    assert slurm.expand_job_ids("12") == ["12"]


def test_steps_and_truncated_states_are_read_as_sacct_means_them():
    assert slurm.parse_sacct("5|OUT_OF_ME+\n5.batch|COMPLETED\n6|NODE_FAIL\n") == {"5": "OUT_OF_MEMORY", "6": "NODE_FAIL"}


def test_max_array_size_is_read_from_scontrol_show_config():
    text = "AccountingStorageTRES   = cpu,mem\nMaxArraySize            = 1001\nMaxJobCount             = 10000\n"
    assert slurm_limits.parse_config_value(text, "MaxArraySize") == "1001"
    assert slurm_limits.parse_config_value(text, "MaxStepCount") is None


def test_resources_map_to_submitit_parameters():
    resources = Resources(partition="gpu", account="lab", qos="high", gpus_per_node=1, cpus_per_task=4, mem_gb=7.5,
                          timeout_min=90, max_requeues=5, array_parallelism=16,
                          extra_sbatch=("--exclusive", "--mail-type=END"))
    params = sbatch_parameters(resources, "ptbjobs-x", array_size_limit=1001)
    assert params["time"] == 90 and isinstance(params["time"], int)
    assert (params["partition"], params["account"], params["qos"]) == ("gpu", "lab", "high")
    assert (params["gpus_per_node"], params["cpus_per_task"], params["mem"]) == (1, 4, "7680M")
    assert params["array_parallelism"] == 16 and params["signal_delay_s"] == 90
    assert params["additional_parameters"] == {"exclusive": True, "mail-type": "END"}
    assert "constraint" not in params  # empty: the cluster's default, not an empty flag
    # a one-minute limit gets its USR2 asked 15 s before the end, not 90 s (before the start)
    assert sbatch_parameters(Resources(timeout_min=1), "x", 1001)["signal_delay_s"] == 15
    assert sbatch_parameters(Resources(), "x", 1001)["array_parallelism"] == 1001


# ---- the executor, with fake Slurm commands ----

FAKE = """#!/usr/bin/env python3
import json, os, sys
from pathlib import Path
name = Path(sys.argv[0]).name
state = Path(os.environ["FAKE_SLURM"])
calls = state / "calls.jsonl"
with calls.open("a") as f:
    f.write(json.dumps([name] + sys.argv[1:]) + "\\n")
if (state / f"{name}.fail").exists():
    sys.stderr.write((state / f"{name}.fail").read_text())
    sys.exit(1)
if name == "sbatch":
    counter = state / "next_id"
    job = int(counter.read_text()) if counter.exists() else 100
    counter.write_text(str(job + 1))
    (state / f"script-{job}.sh").write_text(Path(sys.argv[-1]).read_text())
    print(f"Submitted batch job {job}", flush=True)
    if (state / "sbatch.interrupt").exists():  # the user's Ctrl-C (or a TERM) as sbatch returns
        import signal
        os.kill(os.getppid(), getattr(signal, (state / "sbatch.interrupt").read_text()))
elif name == "scontrol":
    print("MaxArraySize            = " + os.environ.get("FAKE_MAX_ARRAY", "1001"))
elif (state / f"{name}.out").exists():
    sys.stdout.write((state / f"{name}.out").read_text())
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    bin_dir, state = tmp_path / "bin", tmp_path / "fake"
    bin_dir.mkdir()
    state.mkdir()
    for name in ("sbatch", "sacct", "squeue", "scontrol", "scancel", "sinfo", "sacctmgr"):
        path = bin_dir / name
        path.write_text(FAKE)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(state))
    return state


def calls(state: Path, name: str) -> list[list[str]]:
    lines = (state / "calls.jsonl").read_text().splitlines() if (state / "calls.jsonl").exists() else []
    return [c[1:] for c in map(json.loads, lines) if c[0] == name]


def test_runs_beyond_max_array_size_are_split_into_several_arrays(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_MAX_ARRAY", "2")
    sweep = Sweep(tmp_path / "sweep")
    keys = [f"run{i}" for i in range(5)]
    ids = SlurmExecutor().submit(sweep, keys, Resources(timeout_min=10, array_parallelism=1, max_requeues=2))
    assert ids == {"run0": "100_0", "run1": "100_1", "run2": "101_0", "run3": "101_1", "run4": "102"}
    assert len(calls(fake_slurm, "sbatch")) == 3
    first, last = (fake_slurm / "script-100.sh").read_text(), (fake_slurm / "script-102.sh").read_text()
    assert "#SBATCH --array=0-1%1" in first and "--array" not in last  # one run left: a plain job
    assert "#SBATCH --time=10" in first and "#SBATCH --signal=USR2@90" in first
    # each task's pickle is a link to its array's one pickle, whose call i names task i's run folder
    folder = sweep.path / "slurm" / "100"
    assert os.path.samefile(folder / "100_0_submitted.pkl", folder / "100_1_submitted.pkl")
    assert [args for _, args in _pickled_call(folder / "100_1_submitted.pkl").args[0]] == [
        (str(sweep.run_dir(key).resolve()),) for key in ("run0", "run1")]
    assert _pickled_call(sweep.path / "slurm" / "102" / "102_submitted.pkl").args == (str(sweep.run_dir("run4").resolve()),)


def test_without_hard_links_each_task_gets_a_copy_of_its_arrays_pickle(tmp_path, fake_slurm, monkeypatch):
    def no_links(source, target):
        raise PermissionError(1, "Operation not permitted", str(target))

    monkeypatch.setattr(os, "link", no_links)
    sweep = Sweep(tmp_path / "sweep")
    SlurmExecutor().submit(sweep, ["run0", "run1"], Resources())
    folder = sweep.path / "slurm" / "100"
    assert not os.path.samefile(folder / "100_0_submitted.pkl", folder / "100_1_submitted.pkl")
    assert [args for _, args in _pickled_call(folder / "100_1_submitted.pkl").args[0]] == [
        (str(sweep.run_dir(key).resolve()),) for key in ("run0", "run1")]


def _pickled_call(path: Path):
    import pickle

    with open(path, "rb") as handle:
        return pickle.load(handle)


def test_an_array_task_runs_its_own_call_and_requeues_as_it(monkeypatch):
    from submitit.helpers import DelayedSubmission

    from ptbjobs.executors.slurm_tasks import ArrayTasks, CheckpointableRun

    calls = [(CheckpointableRun(), ("/runs/a",)), (CheckpointableRun(), ("/runs/b",))]
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    own = ArrayTasks().checkpoint(calls)  # what submitit pickles for the task at its requeue
    assert isinstance(own, DelayedSubmission) and isinstance(own.function, CheckpointableRun)
    assert own.args == ("/runs/b",)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    with pytest.raises(RuntimeError, match="SLURM_ARRAY_TASK_ID is '2'; this array has tasks 0 to 1"):
        ArrayTasks()(calls)


def test_runs_per_gpu_packs_runs_into_array_tasks(tmp_path, fake_slurm):
    sweep = Sweep(tmp_path / "sweep")
    keys = [f"run{i}" for i in range(5)]
    ids = SlurmExecutor().submit(sweep, keys, Resources(runs_per_gpu=2, gpus_per_node=1))
    assert ids == {"run0": "100_0", "run1": "100_0", "run2": "100_1", "run3": "100_1", "run4": "100_2"}
    assert "#SBATCH --array=0-2%" in (fake_slurm / "script-100.sh").read_text()
    function, args = _pickled_call(sweep.path / "slurm" / "100" / "100_1_submitted.pkl").args[0][1]
    assert type(function).__name__ == "PackedRuns"
    assert args == ([str(sweep.run_dir("run2").resolve()), str(sweep.run_dir("run3").resolve())],)


def test_a_refused_submission_is_one_line_naming_what_sbatch_said(tmp_path, fake_slurm, capsys):
    (fake_slurm / "sbatch.fail").write_text(SBATCH_BAD_PARTITION)
    (fake_slurm / "sinfo.out").write_text("debug*\ngpu\n")
    with pytest.raises(PartialSubmission) as caught:
        SlurmExecutor().submit(Sweep(tmp_path / "s"), ["a", "b"], Resources(partition="nope"))
    assert str(caught.value) == ("[resources] partition = 'nope': no such partition (the cluster has: debug, gpu) "
                                 "(name one of them, or leave partition out for the cluster's default)")
    assert capsys.readouterr().err == ""  # submitit's own print of sbatch's stderr is kept out


def test_arrays_accepted_before_sbatch_refused_one_are_recorded_in_the_manifest(tmp_path, fake_slurm, monkeypatch,
                                                                                 tiny_corpus, capsys):
    monkeypatch.setenv("FAKE_MAX_ARRAY", "2")
    grid = tmp_path / "g.toml"
    grid.write_text('name = "g"\n[defaults]\nepochs = 1\n[axes]\nseed = [1, 2, 3, 4]\n')
    # the first array goes out; then sbatch starts refusing
    script = fake_slurm.parent / "bin" / "sbatch"
    script.write_text(FAKE.replace('if name == "sbatch":', 'if name == "sbatch" and (state / "next_id").exists():\n'
                                   '    sys.stderr.write("sbatch: error: QOSMaxSubmitJobPerUserLimit\\n"); sys.exit(1)\n'
                                   'if name == "sbatch":'))
    sweep_dir = tmp_path / "sweep"
    code = main(["submit", "--grid", str(grid), "--sweep-dir", str(sweep_dir), "--data-dir", str(tiny_corpus),
                 "--executor", "slurm"])
    assert code == 1
    assert capsys.readouterr().err == ("ptbjobs: error: the cluster caps how many jobs you may queue, and it is reached "
                                       "(sbatch: QOSMaxSubmitJobPerUserLimit) (2 runs were submitted before it) "
                                       "(submit again once some have ended: it sends only the runs not yet queued)\n")
    jobs = {k: [j["job_id"] for j in e["jobs"]] for k, e in Sweep(sweep_dir).read_manifest()["runs"].items()}
    assert jobs == {"lstm-d0-s1": ["100_0"], "lstm-d0-s2": ["100_1"], "lstm-d0-s3": [], "lstm-d0-s4": []}
    # once sbatch accepts again, the same submit sends only the two runs that did not go out
    script.write_text(FAKE)
    (fake_slurm / "squeue.out").write_text("100_0|RUNNING\n100_1|PENDING\n")
    assert main(["submit", "--grid", str(grid), "--sweep-dir", str(sweep_dir), "--data-dir", str(tiny_corpus),
                 "--executor", "slurm"]) == 0
    assert "submitted 2 of 4 runs" in capsys.readouterr().out
    jobs = {k: [j["job_id"] for j in e["jobs"]] for k, e in Sweep(sweep_dir).read_manifest()["runs"].items()}
    assert jobs == {"lstm-d0-s1": ["100_0"], "lstm-d0-s2": ["100_1"], "lstm-d0-s3": ["101_0"], "lstm-d0-s4": ["101_1"]}


def test_query_asks_sacct_once_per_array_and_fills_in_what_it_lacks_from_squeue(tmp_path, fake_slurm):
    (fake_slurm / "sacct.out").write_text("8_0|COMPLETED\n8_1|RUNNING\n")
    (fake_slurm / "squeue.out").write_text("9|PENDING\n")  # submitted a moment ago: not in accounting yet
    executor = SlurmExecutor()
    found = executor.query(Sweep(tmp_path / "s"), ["8_0", "8_1", "9"])
    assert found.states == {"8_0": "COMPLETED", "8_1": "RUNNING", "9": "PENDING"}
    assert len(calls(fake_slurm, "sacct")) == 1 and calls(fake_slurm, "sacct")[0][-1] == "8,9"
    assert found.note is None and found.stale is None


def test_a_job_the_controller_forgot_reads_lost_not_an_outage(tmp_path, fake_slurm):
    (fake_slurm / "sacct.out").write_text("8_0|COMPLETED\n")
    (fake_slurm / "squeue.fail").write_text("slurm_load_jobs error: Invalid job id specified\n")  # recorded
    executor = SlurmExecutor()
    found = executor.query(Sweep(tmp_path / "s"), ["8_0", "9"])
    assert found.states == {"8_0": "COMPLETED", "9": "LOST"}
    assert found.note is None and found.stale is None


def test_a_cancelled_pending_array_task_without_a_record_reads_cancelled(tmp_path, fake_slurm):
    sweep = Sweep(tmp_path / "s")
    (fake_slurm / "sacct.out").write_text("8_0|COMPLETED\n")
    executor = SlurmExecutor()
    executor.cancel(sweep, ["8_5", "8_4"])
    assert calls(fake_slurm, "scancel") == [["8_[4-5]"]]
    assert executor.query(sweep, ["8_0", "8_5", "8_6"]).states == {"8_0": "COMPLETED", "8_5": "CANCELLED", "8_6": "LOST"}
    # accounting may go on listing the cancelled tasks in the array's stale pending range
    (fake_slurm / "sacct.out").write_text("8_0|COMPLETED\n8_[4-6]|PENDING\n")
    assert executor.query(sweep, ["8_4", "8_5", "8_6"]).states == {"8_4": "CANCELLED", "8_5": "CANCELLED", "8_6": "PENDING"}


def test_tasks_of_an_array_cancelled_before_any_started_take_the_arrays_own_record(tmp_path, fake_slurm):
    (fake_slurm / "sacct.out").write_text("70|CANCELLED by 0\n")  # recorded: 1,000 held tasks, then scancel
    executor = SlurmExecutor()
    assert executor.query(Sweep(tmp_path / "s"), ["70_0", "70_999"]).states == {"70_0": "CANCELLED", "70_999": "CANCELLED"}
    assert calls(fake_slurm, "squeue") == []  # nothing left to ask the controller


def test_without_accounting_states_come_from_squeue_and_say_so(tmp_path, fake_slurm):
    (fake_slurm / "sacct.fail").write_text(SACCT_DOWN)
    (fake_slurm / "squeue.out").write_text("8_0|RUNNING\n8_1|PENDING\n")
    executor = SlurmExecutor()
    found = executor.query(Sweep(tmp_path / "s"), ["8_0", "8_1"])
    assert found.states == {"8_0": "RUNNING", "8_1": "PENDING"} and found.stale is None
    assert found.note.startswith("accounting unavailable (sacct failed: sacct: error: slurm_persist_conn_open")
    assert "states from squeue" in found.note


def _later(sweep: Sweep, seconds: float = 3600) -> None:
    """The sweep's last answer from Slurm made older, as if the next command came that much later."""
    path = sweep.path / "slurm" / "answer.json"
    answer = json.loads(path.read_text())
    path.write_text(json.dumps({**answer, "time": answer["time"] - seconds}))


def test_commands_share_one_answer_from_slurm_for_the_poll_interval_and_ask_less_often_when_it_is_slow(
        tmp_path, fake_slurm, monkeypatch):
    sweep = Sweep(tmp_path / "s")
    (fake_slurm / "sacct.out").write_text("8_0|RUNNING\n8_1|PENDING\n")
    executor = SlurmExecutor()
    for _ in range(3):  # a status typed three times within 5 s
        assert executor.query(sweep, ["8_0", "8_1"], max_age_s=5).states == {"8_0": "RUNNING", "8_1": "PENDING"}
    assert len(calls(fake_slurm, "sacct")) == 1
    assert executor.query(sweep, ["8_0"], max_age_s=5).states == {"8_0": "RUNNING"}  # a part of what was asked
    executor.query(sweep, ["8_0", "8_2"], max_age_s=5)  # a job the answer does not cover: asked anew
    executor.query(sweep, ["8_0"], max_age_s=0)  # submit, retry, cancel: always anew
    assert len(calls(fake_slurm, "sacct")) == 3
    _later(sweep, 20)
    executor.query(sweep, ["8_0"], max_age_s=30)  # a watcher: 20 s old is young enough
    assert len(calls(fake_slurm, "sacct")) == 3
    _later(sweep, 20)
    executor.query(sweep, ["8_0"], max_age_s=30)
    assert len(calls(fake_slurm, "sacct")) == 4
    # an answer that took longer than SLOW_ANSWER_S: the next is asked for twice as late, and it says so
    clock = iter([0.0, 12.0, 100.0, 100.5])
    monkeypatch.setattr(slurm_answers, "_clock", lambda: next(clock))
    _later(sweep, 40)
    slow = executor.query(sweep, ["8_0"], max_age_s=30)
    assert "answered slowly (12.0 s)" in slow.note and len(calls(fake_slurm, "sacct")) == 5
    _later(sweep, 40)
    executor.query(sweep, ["8_0"], max_age_s=30)  # 40 s old: under twice the interval
    assert len(calls(fake_slurm, "sacct")) == 5
    _later(sweep, 30)
    assert executor.query(sweep, ["8_0"], max_age_s=30).note is None  # asked again, quickly: back to the usual interval
    assert len(calls(fake_slurm, "sacct")) == 6


def test_a_bad_poll_interval_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv("PTBJOBS_POLL_S", "soon")
    with pytest.raises(ConfigError, match="PTBJOBS_POLL_S: must be a number of seconds"):
        slurm_answers.poll_interval_s()


def test_when_slurm_does_not_answer_status_shows_the_last_known_states_and_a_note(tmp_path, fake_slurm, capsys):
    sweep = Sweep(tmp_path / "s")
    sweep.path.mkdir()
    sweep.write_manifest({"version": 1, "name": "s", "runs": {
        key: {"config": _config_dict(), "config_hash": "x", "point": {},
              "jobs": [{"job_id": job, "executor": "slurm", "submitted": 0}]}
        for key, job in (("a", "8_0"), ("b", "8_1"))}})
    (fake_slurm / "sacct.out").write_text("8_0|RUNNING\n8_1|PENDING\n")
    assert main(["status", "--sweep-dir", str(sweep.path)]) == 0
    capsys.readouterr()
    (fake_slurm / "sacct.fail").write_text(SACCT_DOWN)
    (fake_slurm / "squeue.fail").write_text(SQUEUE_DOWN)
    _later(sweep)
    assert main(["status", "--sweep-dir", str(sweep.path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["state"] for r in shown["runs"]] == ["RUNNING", "PENDING"]
    assert shown["notes"] == ["Slurm did not answer (squeue failed: slurm_load_jobs error: Unable to contact slurm "
                              "controller (connect failure)): showing the last known states; "
                              "ptbjobs asks it less often until it answers"]
    assert main(["status", "--sweep-dir", str(sweep.path)]) == 0
    out = capsys.readouterr().out
    assert "2 runs: 1 RUNNING, 1 PENDING" in out and "note: Slurm did not answer" in out
    # on states that may be stale, retry and cancel change nothing and say why
    before = sweep.manifest_path.read_text()
    for command in (["retry"], ["cancel"]):
        assert main(command + ["--sweep-dir", str(sweep.path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Slurm did not answer" in err and "nothing was submitted or cancelled" in err
        assert "showing" not in err  # it shows nothing: it refuses
    assert sweep.manifest_path.read_text() == before and calls(fake_slurm, "scancel") == []
    # and status works on a machine without sbatch (a laptop with the sweep folder, say)
    os.remove(fake_slurm.parent / "bin" / "sbatch")
    assert main(["status", "--sweep-dir", str(sweep.path), "--json"]) == 0
    assert [r["state"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["RUNNING", "PENDING"]


def test_cancel_when_the_controller_is_down_is_one_line_and_exit_1(tmp_path, fake_slurm, capsys):
    sweep = Sweep(tmp_path / "s")
    sweep.path.mkdir()
    sweep.write_manifest({"version": 1, "name": "s", "runs": {
        "a": {"config": _config_dict(), "config_hash": "x", "point": {},
              "jobs": [{"job_id": "8_0", "executor": "slurm", "submitted": 0}]}}})
    (fake_slurm / "sacct.out").write_text("8_0|RUNNING\n")
    (fake_slurm / "scancel.fail").write_text("scancel: error: Kill job error on job id 8_0: Unable to contact slurm controller\n")
    assert main(["cancel", "--sweep-dir", str(sweep.path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scancel failed for 1 of 1 jobs: scancel: error: Kill job error on job id 8_0" in err
    assert json.loads((sweep.path / "slurm" / "cancelled.json").read_text()) == []  # nothing recorded


def test_only_the_jobs_scancel_accepted_are_recorded_as_cancelled(tmp_path, fake_slurm):
    sweep = Sweep(tmp_path / "s")
    (fake_slurm / "scancel.fail").write_text("scancel: error: Kill job error on job id 8_1: Unable to contact slurm controller\n")
    with pytest.raises(PtbjobsError, match="scancel failed for 1 of 3 jobs"):
        SlurmExecutor().cancel(sweep, ["8_0", "8_1", "8_2"])
    assert json.loads((sweep.path / "slurm" / "cancelled.json").read_text()) == ["8_0", "8_2"]
    # a failure that names no job (scancel not answering at all) accepted none
    assert slurm.refused_by_scancel("scancel: error: Socket timed out", ["8_3", "8_4"]) == {"8_3", "8_4"}
    # a range it refused stands for each of its tasks
    assert slurm.refused_by_scancel("scancel: error: Kill job error on job id 8_[3-4,7]: Socket timed out",
                                    ["8_2", "8_3", "8_4", "8_7"]) == {"8_3", "8_4", "8_7"}


def test_scancel_gets_an_arrays_tasks_as_ranges_in_few_words():
    assert slurm.compress_job_ids(["8_1", "8_3", "9", "8_2", "7_0", "8_10"]) == ["9", "8_[1-3,10]", "7_0"]
    every_other = [f"5_{i}" for i in range(0, 100_000, 2)]
    words = slurm.compress_job_ids(every_other, max_chars=2000)
    assert 100 < len(words) < 200 and all(len(w) <= 2000 + len("5_[]") for w in words)
    assert [j for w in words for j in slurm.expand_job_ids(w)] == every_other  # each task once, none lost


def test_auto_picks_slurm_where_sbatch_is_on_path_and_local_elsewhere(fake_slurm, monkeypatch):
    assert get_executor("auto").name == "slurm"
    monkeypatch.setenv("PATH", "/nonexistent")
    assert get_executor("auto").name == "local"


def test_auto_keeps_a_sweep_on_the_executor_of_its_last_submission(fake_slurm, tmp_path, monkeypatch):
    sweep = Sweep(tmp_path / "s")
    assert get_executor("auto", sweep=sweep).name == "slurm"  # no sweep yet: sbatch is on PATH
    sweep.path.mkdir()

    def job(job_id: str, executor: str, submitted: float) -> dict:
        return {"job_id": job_id, "executor": executor, "submitted": submitted}

    entry = {"config": _config_dict(), "config_hash": "x", "point": {}}
    sweep.write_manifest({"version": 1, "name": "s", "runs": {"a": {**entry, "jobs": [job("L1", "local", 10)]}}})
    assert get_executor("auto", sweep=sweep).name == "local"  # although sbatch is on PATH
    assert get_executor("slurm", sweep=sweep).name == "slurm"  # a named executor still wins
    sweep.write_manifest({"version": 1, "name": "s", "runs": {"a": {**entry, "jobs": [job("L1", "local", 30)]},
                                                              "b": {**entry, "jobs": [job("8_0", "slurm", 20)]}}})
    assert get_executor("auto", sweep=sweep).name == "local"  # the latest in time, not in the manifest
    # a sweep that moved to Slurm later stays there, whichever run the later job was for
    sweep.write_manifest({"version": 1, "name": "s", "runs": {"a": {**entry, "jobs": [job("L1", "local", 10)]},
                                                              "b": {**entry, "jobs": [job("8_0", "slurm", 20)]}}})
    assert get_executor("auto", sweep=sweep).name == "slurm"
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(Exception) as caught:  # and says so when sbatch is gone, rather than run it here
        get_executor("auto", sweep=sweep)
    assert "runs on Slurm, and sbatch is not on PATH" in str(caught.value) and "--executor local" in str(caught.value)


def test_slurm_without_sbatch_says_how_to_get_a_cluster(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(Exception) as caught:
        get_executor("slurm")
    assert "sbatch is not on PATH" in str(caught.value) and "slurm/up.sh" in str(caught.value)


def _config_dict() -> dict:
    from ptbjobs.train.config import TrainConfig

    return TrainConfig().to_dict()


def test_held_and_stopped_jobs_count_as_still_in_slurms_hands():
    for held in ("REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED", "SUSPENDED", "REQUEUED"):
        assert states.is_active(held)
    assert _action(states.UNKNOWN) == SKIP_UNKNOWN  # never a second copy on a guess


def pack_folders(tmp_path, data, config, monkeypatch, job_id: str) -> list[Path]:
    """Two run folders (seeds 1 and 2 of `config`) for a pack, run as Slurm task `job_id` with 2 CPUs."""
    from ptbjobs.executors.job import write_spec

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    monkeypatch.setenv("SLURM_JOB_ID", job_id)
    folders = [tmp_path / "a", tmp_path / "b"]
    for seed, folder in enumerate(folders, start=1):
        write_spec(folder, config.replace(seed=seed), data)
    return folders


def test_a_pack_trains_each_run_in_its_own_process_and_names_the_ones_that_failed(tmp_path, tiny_corpus, tiny_config,
                                                                                   monkeypatch):
    from ptbjobs.executors.job import write_spec
    from ptbjobs.executors.slurm_tasks import PackedRuns
    from ptbjobs.train.run_dir import RunDir

    good = pack_folders(tmp_path, tiny_corpus, tiny_config.replace(epochs=1), monkeypatch, job_id="77")
    assert PackedRuns()([str(d) for d in good]) == {str(good[0]): 0, str(good[1]): 0}
    for folder in good:
        assert RunDir(folder).read_state()["state"] == "COMPLETED"
        assert "done: best valid ppl" in (folder / "logs" / "77.log").read_text()
    broken = tmp_path / "c"
    write_spec(broken, tiny_config.replace(epochs=1), tmp_path / "no-data")
    with pytest.raises(RuntimeError, match=r"runs not finished: c \(see their logs/77.log\)"):
        PackedRuns()([str(good[0]), str(broken)])  # the finished one returns at once


def test_runs_per_gpu_is_checked_and_sets_the_local_parallelism(tmp_path, monkeypatch):
    from ptbjobs.core.errors import ConfigError
    from ptbjobs.executors.local import default_parallelism
    from ptbjobs.sweep.grid import parse_grid

    with pytest.raises(ConfigError, match="runs_per_gpu: must be from 1 to 64, got 0"):
        parse_grid('name = "x"\n[axes]\nseed = [1]\n[resources]\nruns_per_gpu = 0\n', tmp_path / "g.toml")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert default_parallelism(Resources(runs_per_gpu=3)) == 6


def test_a_pack_stopped_by_term_while_starting_leaves_each_run_resumable(tmp_path, tiny_corpus, tiny_config,
                                                                         monkeypatch):
    import signal
    import threading
    import time

    from ptbjobs.executors.slurm_tasks import PackedRuns
    from ptbjobs.train.run_dir import RunDir

    folders = pack_folders(tmp_path, tiny_corpus, tiny_config.replace(epochs=40, checkpoint_every_steps=10),
                           monkeypatch, job_id="78")
    # TERM (a cancel) a moment after the task starts: the children get it before or while training
    threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="runs not finished: a, b"):
        PackedRuns()([str(d) for d in folders])
    assert time.monotonic() - started < 30  # stopped, not trained to the end
    for folder in folders:
        assert (folder / "logs" / "78.exit").read_text().strip() == "75"
    # each resumes to the end as its own process would
    monkeypatch.setenv("SLURM_JOB_ID", "79")
    codes = PackedRuns()([str(d) for d in folders])
    assert set(codes.values()) == {0}
    assert all(RunDir(d).read_state()["state"] == "COMPLETED" for d in folders)


def test_a_packed_run_that_failed_shows_failed_while_its_mate_still_runs(tmp_path, fake_slurm, capsys):
    sweep = Sweep(tmp_path / "s")
    sweep.path.mkdir()
    sweep.write_manifest({"version": 1, "name": "s", "runs": {
        key: {"config": _config_dict(), "config_hash": "x", "point": {},
              "jobs": [{"job_id": "8_0", "executor": "slurm", "submitted": 0}]} for key in ("a", "b")}})
    (fake_slurm / "sacct.out").write_text("8_0|RUNNING\n")
    (sweep.run_dir("a") / "logs").mkdir(parents=True)
    (sweep.run_dir("a") / "logs" / "8_0.exit").write_text("1\n")  # out of GPU memory, say
    assert main(["status", "--sweep-dir", str(sweep.path), "--json"]) == 0
    assert [r["state"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["FAILED", "RUNNING"]


def test_the_job_entry_point_says_what_is_wrong_in_one_line(tmp_path, capsys):
    from ptbjobs.executors.job import main as job_main

    assert job_main([]) == 2
    assert capsys.readouterr().err == "usage: python -m ptbjobs.executors.job [--job-id ID] RUN_DIR...\n"
    assert job_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'spec.json'} not found" in err
    assert job_main([str(tmp_path), str(tmp_path / "b")]) == 2  # a fused pack: checked before any run starts
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'spec.json'} not found" in err


def _sweep_of_slurm_jobs(tmp_path: Path, jobs: dict[str, str]) -> Sweep:
    sweep = Sweep(tmp_path / "s")
    sweep.path.mkdir()
    sweep.write_manifest({"version": 1, "name": "s", "runs": {
        key: {"config": _config_dict(), "config_hash": "x", "point": {},
              "jobs": [{"job_id": job_id, "executor": "slurm", "submitted": 0}]} for key, job_id in jobs.items()}})
    return sweep


def test_retry_asks_squeue_once_and_leaves_out_jobs_the_controller_still_holds(tmp_path, fake_slurm):
    from ptbjobs.launch.submit import retry

    sweep = _sweep_of_slurm_jobs(tmp_path, {"a": "8_0", "b": "8_1", "c": "8_2"})
    sweep.write_grid_copy('name = "s"\n[axes]\nseed = [1]\n')
    # a node failed: the controller requeued 8_0 at once, accounting still says NODE_FAIL
    (fake_slurm / "sacct.out").write_text("8_0|NODE_FAIL\n8_1|NODE_FAIL\n8_2|RUNNING\n")
    (fake_slurm / "squeue.out").write_text("8_0|PENDING\n8_1|NODE_FAIL\n8_2|RUNNING\n")
    assert retry(sweep).submitted == {"b": "100"}  # b alone
    # one question about the sweep's jobs; the other squeue call counts the queue for the room left
    assert len([c for c in calls(fake_slurm, "squeue") if "-j" in c]) == 1
    assert len(calls(fake_slurm, "squeue")) == 2


def test_nothing_is_resubmitted_when_squeue_cannot_confirm_the_job_ended(tmp_path, fake_slurm, capsys):
    sweep = _sweep_of_slurm_jobs(tmp_path, {"a": "8_0"})
    (fake_slurm / "sacct.out").write_text("8_0|NODE_FAIL\n")
    (fake_slurm / "squeue.fail").write_text("slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n")
    assert main(["retry", "--sweep-dir", str(sweep.path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "squeue could not confirm that the jobs to resubmit have ended" in err
    assert calls(fake_slurm, "sbatch") == []


def test_submit_resumes_exactly_the_runs_retry_would_and_leaves_revoked_ones_alone():
    from ptbjobs.launch.submit import RESUME

    ended = [getattr(states, name) for name in dir(states) if name.isupper() and isinstance(getattr(states, name), str)]
    for state in ended + ["SOME_NEWER_SLURM_STATE"]:
        assert (_action(state) == RESUME) == (state in states.RETRYABLE), state
    assert _action(states.REVOKED) == SKIP_UNKNOWN  # a sibling cluster of a federation runs it


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_submit_interrupted_after_sbatch_accepted_an_array_records_it_and_sends_no_more(
        tmp_path, fake_slurm, tiny_corpus, signal_name):
    import subprocess
    import sys

    grid = tmp_path / "g.toml"
    grid.write_text('name = "g"\n[defaults]\n' + TINY_MODEL_TOML + '[axes]\nseed = [1, 2, 3, 4]\n')
    (fake_slurm / "sbatch.interrupt").write_text(signal_name)
    command = [sys.executable, "-m", "ptbjobs", "submit", "--grid", str(grid), "--executor", "slurm",
               "--sweep-dir", str(tmp_path / "sweep"), "--data-dir", str(tiny_corpus)]
    env = {**os.environ, "FAKE_MAX_ARRAY": "2"}  # two arrays of two runs
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr == ("ptbjobs: error: interrupted: 2 of 4 runs were submitted before it "
                           "(`ptbjobs submit` again sends the rest)\n")
    assert len(calls(fake_slurm, "sbatch")) == 1  # the second array was not sent
    manifest = Sweep(tmp_path / "sweep").read_manifest()
    assert {k: [j["job_id"] for j in e["jobs"]] for k, e in manifest["runs"].items()} == {
        "lstm-d0-s1": ["100_0"], "lstm-d0-s2": ["100_1"], "lstm-d0-s3": [], "lstm-d0-s4": []}
    # the next submit sends the rest, and only the rest
    (fake_slurm / "sbatch.interrupt").unlink()
    (fake_slurm / "sacct.out").write_text("100_[0-1]|PENDING\n")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = Sweep(tmp_path / "sweep").read_manifest()
    assert [len(e["jobs"]) for e in manifest["runs"].values()] == [1, 1, 1, 1]


SINFO_NODES = """a1|64|257000|gpu:a100:4(S:0-1)
a2|64|257000|gpu:a100:4(S:0-1),shard:8
c1|128|515000|(null)
"""


def test_sinfo_node_lines_give_each_nodes_cpus_memory_and_gpus():
    offers = slurm.parse_sinfo_nodes(SINFO_NODES + "a1|64|257000|gpu:a100:4(S:0-1)\n")  # a1 in two partitions
    assert [(n.name, n.cpus, n.memory_mb, n.gpus) for n in offers] == [
        ("a1", 64, 257000, 4), ("a2", 64, 257000, 4), ("c1", 128, 515000, 0)]


@pytest.mark.parametrize("resources, said, expected", [
    (Resources(gpus_per_node=8), "sbatch: error: Batch job submission failed: Requested node configuration is not available",
     "[resources] gpus_per_node = 8: no node has 8 GPUs (largest: 4)"),
    (Resources(mem_gb=1000), "sbatch: error: Memory specification can not be satisfied\n"
     "sbatch: error: Batch job submission failed: Requested node configuration is not available",
     "[resources] mem_gb = 1000: no node has 1000 GB of memory (largest: 502.9)"),
    (Resources(gpus_per_node=1, cpus_per_task=100), "Requested node configuration is not available",
     "[resources] gpus_per_node = 1, cpus_per_task = 100, mem_gb = 0: no node has all of them at once"),
    (Resources(), "sbatch: error: AssocMaxSubmitJobLimit\nsbatch: error: Batch job submission failed: Job violates "
     "accounting/QOS policy (job submit limit, user's size and/or time limits)",
     "the cluster caps how many jobs you may queue, and it is reached (sbatch: AssocMaxSubmitJobLimit)"),
    (Resources(constraint="h100"), "sbatch: error: Batch job submission failed: Invalid feature specification",
     "[resources] constraint = 'h100': no node has these features"),
])
def test_sbatch_refusals_name_the_resources_key_and_what_the_cluster_has(fake_slurm, resources, said, expected):
    from ptbjobs.executors.slurm_refusals import explain

    (fake_slurm / "sinfo.out").write_text(SINFO_NODES)
    assert explain(said, resources)[0] == expected


def test_the_smallest_submit_limit_that_applies_is_read_from_accounting():
    assoc = "|normal\n40|\n"  # two associations of the user; one caps it at 40
    qos_table = "normal|\nshort|25\nlong|100\n"
    assert slurm_limits.parse_submit_limits(assoc, qos_table) == 40
    assert slurm_limits.parse_submit_limits(assoc, qos_table, qos="short") == 25  # the grid's qos, stricter
    assert slurm_limits.parse_submit_limits("|long\n", qos_table) == 100  # the association's default QOS
    assert slurm_limits.parse_submit_limits("|\n", qos_table) is None  # no limit anywhere


def test_the_census_counts_each_array_task_and_only_this_users_queued_or_running_jobs():
    out = ("7_[3-5]|PENDING|ana|ptbjobs-s\n7_0|RUNNING|ana|ptbjobs-s\n7_1|COMPLETED|ana|ptbjobs-s\n"
           "8|RUNNING|ana|ptbjobs-feed-s\n9|PENDING|bob|ptbjobs-s\n")
    census = slurm_limits.parse_census(out, "ana", "ptbjobs-s")
    assert (census.user_active, census.held, census.named_active) == (5, 7, 4)
