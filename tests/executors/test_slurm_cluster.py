"""The Slurm executor on a real cluster: the one-node cluster of slurm/up.sh (CI brings it up).

Skipped where no cluster answers, except under CI, where that is a failure. A requeued job waits
about 25 s (the credential lifetime, cut to 10 s by slurm/up.sh, plus the scheduler's next pass)
before it starts again, so the requeue tests are few and share their waits.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import TINY_MODEL_TOML, TINY_SEARCH_TOML
from helpers import all_ended, assert_same_run, wait_until
from ptbjobs.cli import main
from ptbjobs.core import states
from ptbjobs.executors import slurm_commands as slurm
from ptbjobs.executors.slurm import SlurmExecutor
from ptbjobs.launch.cancel import cancel
from ptbjobs.launch.status import collect
from ptbjobs.launch.submit import retry, submit
from ptbjobs.sweep.folder import Sweep
from ptbjobs.sweep.grid import load_grid
from ptbjobs.train.run_dir import RunDir
from ptbjobs.train.runner import run_training

REPO = Path(__file__).resolve().parents[2]

GRID = '''
name = "{name}"
[defaults]
''' + TINY_MODEL_TOML + '''epochs = {epochs}
decay_after = 100
checkpoint_every_min = 0
checkpoint_every_steps = 10
[axes]
cell = {cells}
dropout = [0.0]
seed = {seeds}
[resources]
timeout_min = {timeout_min}
max_requeues = {max_requeues}
gpus_per_node = {gpus}
cpus_per_task = {cpus}
runs_per_gpu = {runs_per_gpu}
fuse = {fuse}
extra_sbatch = {extra}
'''


def cluster_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15).stdout
    except subprocess.TimeoutExpired:
        return False
    return any(s.rstrip("*") in ("idle", "mixed", "allocated") for s in out.split())


@pytest.fixture(scope="module")
def cluster() -> None:
    if not cluster_answers():
        if os.environ.get("CI"):
            pytest.fail("no Slurm cluster answers: .ci/run brings one up with slurm/up.sh")
        pytest.skip("no Slurm cluster here (sudo bash slurm/up.sh brings one up)")


def make_grid(tmp_path: Path, name: str, epochs: int, cells=("lstm",), seeds=(1,), timeout_min: int = 10,
              max_requeues: int = 3, gpus: int = 0, cpus: int = 1, runs_per_gpu: int = 1, extra=(), fuse: bool = False):
    path = tmp_path / f"{name}.toml"
    path.write_text(GRID.format(name=name, epochs=epochs, cells=json.dumps(list(cells)), seeds=json.dumps(list(seeds)),
                                timeout_min=timeout_min, max_requeues=max_requeues, gpus=gpus, cpus=cpus,
                                runs_per_gpu=runs_per_gpu, extra=json.dumps(list(extra)), fuse=json.dumps(fuse)))
    return path


def sacct_rows(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """sacct's own words on the jobs: state, start, end, allocated resources, restarts."""
    arrays = ",".join(sorted({slurm.base_id(j) for j in job_ids}))
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,Start,End,AllocTRES", "-j", arrays],
                         capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        job_id, state, start, end, tres = line.split("|")
        rows[job_id] = {"state": states.normalise_slurm_state(state), "start": start, "end": end, "tres": tres}
    return rows


def sacct_ended(job_ids: list[str]) -> dict[str, dict[str, str]] | None:
    """sacct's rows once every job has ended for Slurm too (a run folder says COMPLETED a moment
    before its job does)."""
    rows = sacct_rows(job_ids)
    return rows if all(j in rows and states.is_finished(rows[j]["state"]) for j in job_ids) else None


def job_ids(sweep: Sweep) -> dict[str, str]:
    return {key: entry["jobs"][-1]["job_id"] for key, entry in sweep.read_manifest()["runs"].items()}


def log_text(sweep: Sweep, key: str) -> str:
    manifest = sweep.read_manifest()
    paths = SlurmExecutor().log_paths(sweep, key, [j["job_id"] for j in manifest["runs"][key]["jobs"]])
    return "".join(p.read_text() for p in paths if p.exists())


def train_reference(config, out: Path, data: Path) -> None:
    """The same run uninterrupted, in this process, with the jobs' one thread (cpus_per_task = 1):
    a different thread count sums in another order, which moves the last digits."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_training(config, out, data, handle_signals=False)
    finally:
        torch.set_num_threads(threads)


def epochs_lasting(config, seconds: float, work: Path, data: Path) -> int:
    """How many epochs of `config` train for about `seconds` on this machine, as its own run
    measures them (the trainer's elapsed time, one thread): sizes a run that must outlast its time
    limit on a fast machine without needing many attempts on a slow one. (Timing the call instead
    would count the first training's one-time costs.)"""
    import dataclasses

    train_reference(dataclasses.replace(config, epochs=10), work, data)
    per_epoch = RunDir(work).read_metrics()[9]["elapsed_s"] / 10
    return max(20, math.ceil(seconds / per_epoch))


def first_checkpoint(run_dir: Path):
    return wait_until(lambda: list((run_dir / "checkpoints").glob("ckpt-*.pt")), timeout_s=120, every_s=0.1)


def test_a_grid_goes_out_as_one_array_and_gpu_requests_keep_to_the_two_fake_gpus(cluster, tmp_path, tiny_corpus, capsys):
    grid_path = make_grid(tmp_path, "array", epochs=3, cells=("lstm", "gru"), seeds=(1, 2), gpus=1)
    sweep_dir = tmp_path / "sweep"
    assert main(["submit", "--grid", str(grid_path), "--sweep-dir", str(sweep_dir), "--data-dir", str(tiny_corpus),
                 "--executor", "slurm"]) == 0
    sweep = Sweep(sweep_dir)
    ids = job_ids(sweep)
    assert len({slurm.base_id(j) for j in ids.values()}) == 1 and sorted(ids.values())[0].endswith("_0")
    status = wait_until(lambda: all_ended(sweep), timeout_s=300, every_s=1)
    assert [r["state"] for r in status["runs"]] == [states.COMPLETED] * 4
    assert all(r["epoch"] == 3 and r["test_ppl"] is not None for r in status["runs"])

    # each task held one of the two GPUs, so at most two ran at once, and two did
    rows = wait_until(lambda: sacct_ended(list(ids.values())), timeout_s=60, every_s=0.5)
    assert all("gres/gpu=1" in rows[j]["tres"] for j in ids.values())
    spans = [(datetime.fromisoformat(rows[j]["start"]), datetime.fromisoformat(rows[j]["end"])) for j in ids.values()]
    assert max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans) == 2

    # status --json says what sacct says
    capsys.readouterr()
    assert main(["status", "--sweep-dir", str(sweep_dir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {r["job_id"]: r["state"] for r in shown["runs"]} == {j: rows[j]["state"] for j in ids.values()}
    assert shown["notes"] == []

    # submitting the same grid again submits nothing
    assert main(["submit", "--grid", str(grid_path), "--sweep-dir", str(sweep_dir), "--data-dir", str(tiny_corpus),
                 "--executor", "slurm"]) == 0
    assert all(len(entry["jobs"]) == 1 for entry in sweep.read_manifest()["runs"].values())
    # the logs command finds the task's output
    capsys.readouterr()
    assert main(["logs", "gru-d0-s2", "--sweep-dir", str(sweep_dir)]) == 0
    assert "epoch 3/3: lr" in capsys.readouterr().out


def test_runs_requeued_by_usr2_and_by_their_time_limit_resume_and_end_as_if_uninterrupted(cluster, tmp_path, tiny_corpus, capsys):
    # A: a short run sent USR2 by hand (a preemption); B: a run longer than its one-minute limit
    short = load_grid(make_grid(tmp_path, "short", epochs=30, timeout_min=1, max_requeues=5))
    # B must still train when Slurm warns it. The USR2 is due 15 s before the limit, but slurmctld
    # looks at time limits every 30 s, so it comes 15 to 45 s into an attempt: B is sized to 55 s
    # of training here (a fixed 110 epochs took 24 s on a fast CPU and ended unwarned). Two attempts,
    # or three; the spare requeues and the long wait are for a machine busy with other work.
    gru = load_grid(make_grid(tmp_path, "calibrate", epochs=1, cells=("gru",))).runs[0].config
    epochs_b = epochs_lasting(gru, 55, tmp_path / "calibrate", tiny_corpus)
    long = load_grid(make_grid(tmp_path, "long", epochs=epochs_b, cells=("gru",), timeout_min=1, max_requeues=15))
    sweep_a, sweep_b = Sweep(tmp_path / "a"), Sweep(tmp_path / "b")
    submit(short, sweep_a, SlurmExecutor(), data_dir=tiny_corpus)
    submit(long, sweep_b, SlurmExecutor(), data_dir=tiny_corpus)
    key_a, key_b = short.runs[0].key, long.runs[0].key
    first_checkpoint(sweep_a.run_dir(key_a))
    slurm.scancel([job_ids(sweep_a)[key_a]], signal="USR2")

    reference = tmp_path / "reference"  # trained here while the jobs wait to be requeued
    train_reference(short.runs[0].config, reference, tiny_corpus)

    for sweep in (sweep_a, sweep_b):
        status = wait_until(lambda: all_ended(sweep), timeout_s=1200, every_s=2)
        assert status["runs"][0]["state"] == states.COMPLETED, log_text(sweep, status["runs"][0]["key"])
        assert len(sweep.read_manifest()["runs"][status["runs"][0]["key"]]["jobs"]) == 1  # requeued in place
    # each start of the one job is a try, and `logs` shows each start's output on its own
    assert collect(sweep_a)["runs"][0]["attempts"] == 2
    tries_b = collect(sweep_b)["runs"][0]["attempts"]
    assert tries_b >= 2
    assert main(["logs", key_b, "--sweep-dir", str(sweep_b.path)]) == 0
    shown = capsys.readouterr().out
    assert shown.count(f"==> attempt {job_ids(sweep_b)[key_b]} (slurm), start ") == tries_b
    assert "resuming from" in shown.split(", start 2 of")[1]
    text_a, text_b = log_text(sweep_a, key_a), log_text(sweep_b, key_b)
    assert "Caught signal SIGUSR2" in text_a and "resuming from" in text_a
    assert "Caught signal SIGUSR2" in text_b and "resuming from" in text_b and "timed-out" in text_b
    assert_same_run(reference, sweep_a.run_dir(key_a))
    trained_b = [r["epoch"] for r in RunDir(sweep_b.run_dir(key_b)).read_metrics() if not r.get("final")]
    assert trained_b == list(range(1, epochs_b + 1))  # every epoch once, none lost or repeated across attempts


def test_cancel_stops_running_and_pending_tasks_and_retry_completes_them(cluster, tmp_path, tiny_corpus):
    # each task asks for both GPUs: one runs, the others wait in the array
    grid = load_grid(make_grid(tmp_path, "cancel", epochs=12, seeds=(1, 2, 3), gpus=2))
    sweep = Sweep(tmp_path / "sweep")
    submit(grid, sweep, SlurmExecutor(), data_dir=tiny_corpus)
    running = wait_until(lambda: [r for r in grid.runs if list((sweep.run_dir(r.key) / "checkpoints").glob("ckpt-*"))],
                         timeout_s=120, every_s=0.1)[0]
    assert sorted(cancel(sweep)) == sorted(r.key for r in grid.runs)
    status = wait_until(lambda: all_ended(sweep), timeout_s=120, every_s=1)
    assert [r["state"] for r in status["runs"]] == [states.CANCELLED] * 3
    assert RunDir(sweep.run_dir(running.key)).read_state()["state"] == "INTERRUPTED"  # it saved on SIGTERM
    # accounting says CANCELLED a moment before the controller lets go of the job (COMPLETING):
    # retry leaves a job alone until then
    wait_until(lambda: not SlurmExecutor().still_held(sweep, list(job_ids(sweep).values())), timeout_s=60, every_s=0.5)
    resubmitted = retry(sweep).submitted
    assert sorted(resubmitted) == sorted(r.key for r in grid.runs)
    status = wait_until(lambda: all_ended(sweep), timeout_s=300, every_s=1)
    assert [r["state"] for r in status["runs"]] == [states.COMPLETED] * 3
    assert all(r["attempts"] == 2 for r in status["runs"])
    assert "resuming from" in log_text(sweep, running.key)
    reference = tmp_path / "reference"
    train_reference(running.config, reference, tiny_corpus)
    assert_same_run(reference, sweep.run_dir(running.key))


def test_packed_and_fused_runs_share_their_tasks_and_requeued_packs_resume_each_run_exactly(cluster, tmp_path,
                                                                                           tiny_corpus):
    # (both sweeps at once: a requeued task waits a while before it starts again, and they share that wait)
    # packed: 4 runs, 2 per task: two tasks, one fake GPU each, one thread per run (2 CPUs split in two)
    grid = load_grid(make_grid(tmp_path, "packed", epochs=30, cells=("lstm", "gru"), seeds=(1, 2), gpus=1, cpus=2,
                               runs_per_gpu=2))
    sweep = Sweep(tmp_path / "sweep")
    submit(grid, sweep, SlurmExecutor(), data_dir=tiny_corpus)
    # fused, in packs of 3: the two lstm runs train as one model in one process, gru-d0-s1 (of
    # another shape) in a process of its own beside them; 2 CPUs split by runs, one thread each
    fused_grid = load_grid(make_grid(tmp_path, "fused", epochs=30, cells=("lstm", "gru"), seeds=(1, 2), cpus=2,
                                     runs_per_gpu=3, fuse=True))
    fused = Sweep(tmp_path / "fused")
    submit(fused_grid, fused, SlurmExecutor(), data_dir=tiny_corpus)

    ids = job_ids(sweep)
    assert sorted(set(ids.values())) == [f"{slurm.base_id(ids['lstm-d0-s1'])}_0", f"{slurm.base_id(ids['lstm-d0-s1'])}_1"]
    pack = [key for key, job in ids.items() if job == ids["lstm-d0-s1"]]
    assert pack == ["lstm-d0-s1", "lstm-d0-s2"]
    fused_ids = job_ids(fused)
    fused_pack = [key for key, job in fused_ids.items() if job == fused_ids["lstm-d0-s1"]]
    assert fused_pack == ["lstm-d0-s1", "lstm-d0-s2", "gru-d0-s1"] and fused_ids["gru-d0-s2"] != fused_ids["lstm-d0-s1"]
    for folder, keys in ((sweep, pack), (fused, fused_pack)):  # the runs of each pack train at once
        for key in keys:
            first_checkpoint(folder.run_dir(key))
    slurm.scancel([ids["lstm-d0-s1"], fused_ids["lstm-d0-s1"]], signal="USR2")

    # the references, meanwhile
    train_reference(grid.runs[1].config, tmp_path / "reference", tiny_corpus)  # lstm-d0-s2
    fused_configs = {spec.key: spec.config for spec in fused_grid.runs}
    fused_reference = tmp_path / "fused-reference"
    train_reference(fused_configs["gru-d0-s1"], fused_reference / "gru-d0-s1", tiny_corpus)
    train_fused_reference([(fused_configs[key], fused_reference / key) for key in fused_pack[:2]], tiny_corpus)

    for folder, keys, all_ids in ((sweep, pack, ids), (fused, fused_pack, fused_ids)):
        status = wait_until(lambda: all_ended(folder), timeout_s=300, every_s=1)
        assert [r["state"] for r in status["runs"]] == [states.COMPLETED] * 4
        # one job per run; the requeued pack's task started twice, so its runs count two tries
        assert all(len(entry["jobs"]) == 1 for entry in folder.read_manifest()["runs"].values())
        assert {r["key"]: r["attempts"] for r in collect(folder)["runs"]} == {
            key: 2 if key in keys else 1 for key in all_ids}
        for key in keys:
            own = log_text(folder, key)  # each run's own log, in its folder
            assert "resuming from" in own and own.count("done: ") == 1
    rows = wait_until(lambda: sacct_ended(sorted(set(ids.values()))), timeout_s=60, every_s=0.5)
    assert sorted(rows) == sorted(set(ids.values())) and all("gres/gpu=1" in r["tres"] for r in rows.values())
    assert_same_run(tmp_path / "reference", sweep.run_dir("lstm-d0-s2"))
    task_log = "".join(p.read_text() for p in slurm_task_logs(fused, fused_ids["lstm-d0-s1"]))
    started = f"ptbjobs job: {fused.run_dir('lstm-d0-s1').resolve()}, {fused.run_dir('lstm-d0-s2').resolve()} on"
    assert task_log.count(started) == 2  # one process for both, at each start
    for key in fused_pack:
        assert_same_run(fused_reference / key, fused.run_dir(key))


def test_a_run_of_a_pack_cancelled_alone_stops_with_its_state_saved_and_its_pack_mate_trains_on(cluster, tmp_path,
                                                                                                tiny_corpus):
    grid = load_grid(make_grid(tmp_path, "alone", epochs=40, seeds=(1, 2), cpus=2, runs_per_gpu=2))
    sweep = Sweep(tmp_path / "sweep")
    submit(grid, sweep, SlurmExecutor(), data_dir=tiny_corpus)
    ids = job_ids(sweep)
    assert ids["lstm-d0-s1"] == ids["lstm-d0-s2"]
    first_checkpoint(sweep.run_dir("lstm-d0-s2"))
    assert cancel(sweep, ["lstm-d0-s2"]) == ["lstm-d0-s2"]
    during = wait_until(lambda: (lambda found: found if found["lstm-d0-s2"] == states.CANCELLED else None)(
        {r["key"]: r["state"] for r in collect(sweep)["runs"]}), timeout_s=60, every_s=0.2)
    assert states.is_active(during["lstm-d0-s1"])  # the task was not cancelled
    status = wait_until(lambda: all_ended(sweep), timeout_s=300, every_s=1)
    assert {r["key"]: r["state"] for r in status["runs"]} == {"lstm-d0-s1": states.COMPLETED,
                                                              "lstm-d0-s2": states.CANCELLED}
    assert RunDir(sweep.run_dir("lstm-d0-s2")).read_state()["state"] == states.INTERRUPTED
    retried = retry(sweep).submitted
    assert list(retried) == ["lstm-d0-s2"] and retried["lstm-d0-s2"] != ids["lstm-d0-s2"]
    status = wait_until(lambda: all_ended(sweep), timeout_s=300, every_s=1)
    assert [r["state"] for r in status["runs"]] == [states.COMPLETED] * 2
    assert "resuming from" in log_text(sweep, "lstm-d0-s2")


def train_fused_reference(runs: list[tuple], data: Path) -> None:
    """A fused pack uninterrupted, in this process, with the pack's one thread."""
    import torch

    from ptbjobs.train.pack_runner import run_pack
    from ptbjobs.train.reporting import SilentReporter

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_pack([(config, out, SilentReporter()) for config, out in runs], data, handle_signals=False)
    finally:
        torch.set_num_threads(threads)


def slurm_task_logs(sweep: Sweep, job_id: str) -> list[Path]:
    return sorted((sweep.path / "slurm" / slurm.base_id(job_id)).glob(f"{job_id}_*_log.out"))


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="stops and restarts Slurm's daemons: needs root")


def stop_daemon(name: str) -> None:
    subprocess.run(["pkill", "-x", name], check=True)
    wait_until(lambda: subprocess.run(["pgrep", "-x", name], capture_output=True).returncode != 0, timeout_s=30)


def restart_cluster() -> None:
    subprocess.run(["bash", str(REPO / "slurm" / "up.sh")], check=True, capture_output=True)


@needs_root
def test_with_accounting_stopped_status_falls_back_to_squeue_and_says_so(cluster, tmp_path, tiny_corpus, capsys):
    # a held job: its state is Slurm's to say (a finished run's folder says it, and Slurm is not asked)
    grid = load_grid(make_grid(tmp_path, "nodbd", epochs=1, extra=["--hold"]))
    sweep = Sweep(tmp_path / "sweep")
    submit(grid, sweep, SlurmExecutor(), data_dir=tiny_corpus)
    wait_until(lambda: collect(sweep, max_age_s=0)["runs"][0]["state"] == states.PENDING, timeout_s=60, every_s=0.5)
    stop_daemon("slurmdbd")
    try:
        status = collect(sweep, max_age_s=0)
        assert status["runs"][0]["state"] == states.PENDING
        assert len(status["notes"]) == 1 and status["notes"][0].startswith("accounting unavailable (sacct failed:")
        assert main(["status", "--sweep-dir", str(sweep.path)]) == 0
        assert "note: accounting unavailable" in capsys.readouterr().out
    finally:
        restart_cluster()
    assert collect(sweep, max_age_s=0)["notes"] == []
    assert main(["cancel", "--sweep-dir", str(sweep.path)]) == 0


@needs_root
def test_a_cancel_refused_by_a_stopped_controller_records_nothing_and_retry_starts_no_second_job(
        cluster, tmp_path, tiny_corpus, capsys):
    # held jobs stay pending whatever happens, so the test sees only what cancel did
    grid = load_grid(make_grid(tmp_path, "nocancel", epochs=1, seeds=(1, 2), extra=["--hold"]))
    sweep = Sweep(tmp_path / "sweep")
    submit(grid, sweep, SlurmExecutor(), data_dir=tiny_corpus)
    ids = sorted(job_ids(sweep).values())
    wait_until(lambda: set(ids) <= set(slurm.sacct_states(ids)), timeout_s=30, every_s=0.5)  # accounting lags
    stop_daemon("slurmctld")
    try:
        assert main(["cancel", "--sweep-dir", str(sweep.path)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "scancel failed for 2 of 2 jobs" in err[0] and "not cancelled" in err[0]
    finally:
        restart_cluster()
    assert [r["state"] for r in collect(sweep)["runs"]] == [states.PENDING] * 2
    assert retry(sweep).submitted == {}  # nothing was cancelled: nothing to start again
    assert sorted(cancel(sweep)) == sorted(r.key for r in grid.runs)  # with the controller back, it works
    status = wait_until(lambda: all_ended(sweep), timeout_s=60, every_s=0.5)
    assert [r["state"] for r in status["runs"]] == [states.CANCELLED] * 2
    assert sorted(job_ids(sweep).values()) == ids  # one job per run, ever


@needs_root
def test_retry_while_accounting_still_says_node_fail_of_a_requeued_job_starts_no_second_job(
        cluster, tmp_path, tiny_corpus):
    grid = load_grid(make_grid(tmp_path, "nodefail", epochs=30))
    sweep = Sweep(tmp_path / "sweep")
    submit(grid, sweep, SlurmExecutor(), data_dir=tiny_corpus)
    key = grid.runs[0].key
    job = job_ids(sweep)[key]
    first_checkpoint(sweep.run_dir(key))
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=ptbjobs-test"], check=True)
    try:
        # the controller requeues the job at once; accounting says NODE_FAIL for a few seconds more
        # (shorter on a slow machine): retry goes right after the test sees it
        wait_until(lambda: slurm.sacct_states([job]).get(job) == states.NODE_FAIL, timeout_s=30, every_s=0.05)
        # (here the window lasted 2.2 to 2.5 s, retry took 0.11 s; on a slow machine it may close
        # before retry asks, and then retry sees the job queued again from accounting itself)
        retried = retry(sweep)
        assert retried.submitted == {}  # never a second job for the run
        # where retry saw accounting's NODE_FAIL, squeue's word kept the run out (PENDING again)
        assert retried.held in ({}, {key: states.PENDING})
    finally:
        restart_cluster()  # ReturnToService brings the node back by itself; this makes sure of it
    # (status itself reads NODE_FAIL while accounting says so, then PENDING again)
    wait_until(lambda: collect(sweep)["runs"][0]["state"] == states.COMPLETED, timeout_s=180, every_s=1)
    assert job_ids(sweep) == {key: job} and len(sweep.read_manifest()["runs"][key]["jobs"]) == 1


@pytest.mark.parametrize("setting, expected", [
    ("gpus_per_node = 8", "[resources] gpus_per_node = 8: no node has 8 GPUs (largest: 2)"),
    ("mem_gb = 100000", "[resources] mem_gb = 100000: no node has 100000 GB of memory (largest: 15.6)"),
    ('partition = "nope"', "[resources] partition = 'nope': no such partition (the cluster has: debug)"),
])
def test_a_refused_submit_names_the_resources_key_and_leaves_no_sweep_folder(cluster, tmp_path, tiny_corpus, capsys,
                                                                             setting, expected):
    grid = tmp_path / "g.toml"
    grid.write_text(f'name = "refused"\n[defaults]\n{TINY_MODEL_TOML}[axes]\nseed = [1, 2]\n[resources]\n{setting}\n')
    sweep_dir = tmp_path / "sweep"
    assert main(["submit", "--grid", str(grid), "--sweep-dir", str(sweep_dir), "--data-dir", str(tiny_corpus),
                 "--executor", "slurm"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ptbjobs: error: {expected} (")
    assert not sweep_dir.exists()


def test_two_status_watches_and_a_submit_wait_ask_sacct_at_most_once_a_poll_interval(cluster, tmp_path, tiny_corpus):
    """Slurm's manual: no sacct from loops. Three terminals watching one sweep share one answer per
    poll interval (PTBJOBS_POLL_S: 30 s by default, 10 s here to keep the test short), counted by a
    sacct that logs each call: at most 3 in 20 s, where each asking for itself would make 9."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "sacct-calls"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {shutil.which("sacct")} "$@"\n')
    (bin_dir / "sacct").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env["PTBJOBS_POLL_S"] = "10"
    grid = make_grid(tmp_path, "polite", epochs=1, seeds=(1, 2), extra=["--hold"])  # nothing ends meanwhile
    sweep = Sweep(tmp_path / "sweep")
    ptbjobs = [sys.executable, "-m", "ptbjobs"]
    started = time.monotonic()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    terminals = [subprocess.Popen(ptbjobs + ["submit", "--grid", str(grid), "--sweep-dir", str(sweep.path), "--executor",
                                             "slurm", "--data-dir", str(tiny_corpus), "--wait"], **quiet)]
    try:
        wait_until(lambda: sweep.exists() and all(e["jobs"] for e in sweep.read_manifest()["runs"].values()), timeout_s=30)
        terminals += [subprocess.Popen(ptbjobs + ["status", "--watch", "--sweep-dir", str(sweep.path)], **quiet)
                      for _ in range(2)]
        time.sleep(max(0.0, 20 - (time.monotonic() - started)))
        assert all(t.poll() is None for t in terminals)  # all three still watching
    finally:
        for terminal in terminals:
            terminal.terminate()
            terminal.wait(timeout=30)
        main(["cancel", "--sweep-dir", str(sweep.path)])
    asked = calls.read_text().splitlines() if calls.exists() else []
    assert 1 <= len(asked) <= 3, asked


@contextlib.contextmanager
def submit_limit(jobs: int):
    """The cluster's per-user MaxSubmitJobs (slurm/up.sh applies it in accounting; lifted after)."""
    subprocess.run(["bash", str(REPO / "slurm" / "up.sh")], check=True, capture_output=True,
                   env={**os.environ, "SLURM_MAX_SUBMIT_JOBS": str(jobs)})
    try:
        yield
    finally:
        env = {k: v for k, v in os.environ.items() if k != "SLURM_MAX_SUBMIT_JOBS"}
        subprocess.run(["bash", str(REPO / "slurm" / "up.sh")], check=True, capture_output=True, env=env)


class QueueWatch:
    """The most jobs of this user squeue listed at once, looked at every 0.3 s in a thread."""

    def __init__(self):
        self.most, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        while not self._stop.is_set():
            out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"], capture_output=True,
                                 text=True).stdout
            self.most = max(self.most, len(out.split()))
            time.sleep(0.3)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.most


def folders_completed(sweep: Sweep) -> bool:
    """Every run's own folder says COMPLETED (read directly: no ptbjobs command, which could feed)."""
    return all((RunDir(sweep.run_dir(k)).read_state() or {}).get("state") == states.COMPLETED
               for k in sweep.read_manifest()["runs"])


@needs_root
@pytest.mark.parametrize("wait", [True, False], ids=["submit-wait", "no-terminal"])
def test_with_a_limit_of_three_jobs_a_ten_run_grid_completes_each_run_on_one_job(cluster, tmp_path, tiny_corpus,
                                                                                  wait):
    grid = make_grid(tmp_path, f"limit3-{wait}", epochs=1, seeds=range(1, 11))
    sweep = Sweep(tmp_path / "sweep")
    with submit_limit(3):
        queue = QueueWatch()
        try:
            command = ["submit", "--grid", str(grid), "--sweep-dir", str(sweep.path), "--executor", "slurm",
                       "--data-dir", str(tiny_corpus)]
            if wait:
                env = {**os.environ, "PTBJOBS_POLL_S": "2"}  # a short interval: the test takes a minute, not five
                done = subprocess.run([sys.executable, "-m", "ptbjobs"] + command + ["--wait"], env=env,
                                      capture_output=True, text=True, timeout=600)
                assert done.returncode == 0, done.stderr
                assert "8 runs wait in the sweep (QUEUED_LOCALLY)" in done.stdout  # 2 sent, a slot for the feeder
            else:
                assert main(command) == 0  # and nothing else: the ending tasks send the rest
                wait_until(lambda: folders_completed(sweep), timeout_s=600, every_s=1)
        finally:
            most = queue.stop()
    runs = sweep.read_manifest()["runs"]
    assert len(runs) == 10 and all(len(entry["jobs"]) == 1 and not entry.get("waiting") for entry in runs.values())
    assert len({entry["jobs"][0]["job_id"] for entry in runs.values()}) == 10
    assert 1 <= most <= 3
    assert {r["state"] for r in collect(sweep, max_age_s=0)["runs"]} == {states.COMPLETED}


@pytest.mark.parametrize("moment", ["before", "after"])
def test_a_submit_killed_around_sbatch_and_run_again_sends_no_run_twice(cluster, tmp_path, tiny_corpus, moment):
    """kill -9 cannot be held off: an sbatch that kills its caller just before it runs, or just
    after Slurm accepted the array (the worst moment: the jobs exist, and the manifest has none)."""
    grid = make_grid(tmp_path, f"killed-{moment}", epochs=1, seeds=range(1, 5), extra=["--hold"])
    sweep = Sweep(tmp_path / f"killed-{moment}")
    killing = tmp_path / "bin" / "sbatch"
    killing.parent.mkdir()
    real = shutil.which("sbatch")
    run_real = f'{real} "$@"; rc=$?'
    killing.write_text(f"#!/bin/bash\n{run_real if moment == 'after' else 'rc=1'}\nkill -9 $PPID\nexit $rc\n")
    killing.chmod(0o755)
    command = [sys.executable, "-m", "ptbjobs", "submit", "--grid", str(grid), "--sweep-dir", str(sweep.path),
               "--executor", "slurm", "--data-dir", str(tiny_corpus)]
    name = f"ptbjobs-{sweep.path.name}"

    def tasks_queued() -> list[str]:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%j"], capture_output=True, text=True, check=True).stdout
        return [line.split("|")[0] for line in out.split() if line.split("|")[1].startswith(name + ":")]

    try:
        killed = subprocess.run(command, env={**os.environ, "PATH": f"{killing.parent}{os.pathsep}{os.environ['PATH']}"},
                                capture_output=True, text=True, timeout=120)
        assert killed.returncode == -9, killed.stderr
        left = sweep.read_manifest()
        assert all(entry["jobs"] == [] for entry in left["runs"].values()) and len(left["sending"]) == 1
        assert len(tasks_queued()) == (4 if moment == "after" else 0)
        again = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        runs = sweep.read_manifest()["runs"]
        assert all(len(entry["jobs"]) == 1 for entry in runs.values())
        recorded = sorted(entry["jobs"][0]["job_id"] for entry in runs.values())
        assert sorted(tasks_queued()) == recorded and len(set(recorded)) == 4  # each run once, on its own task
        assert sweep.read_manifest()["sending"] == {}
    finally:
        arrays = {slurm.base_id(job_id) for job_id in tasks_queued()}
        if arrays:
            subprocess.run(["scancel", *arrays], capture_output=True)


SEARCH_GRID = '''
name = "search"
[defaults]
''' + TINY_MODEL_TOML + '''epochs = {epochs}
decay_after = 1
lr_decay = 0.9
checkpoint_every_min = 0
checkpoint_every_steps = 10
''' + TINY_SEARCH_TOML + '''[resources]
timeout_min = 10
cpus_per_task = 1
array_parallelism = 1
'''


def test_a_search_on_slurm_pauses_and_promotes_by_the_rule_and_a_requeued_survivor_ends_as_if_never_stopped(
        cluster, tmp_path, tiny_corpus):
    from ptbjobs.sweep.arrivals import read_arrivals, read_rung
    from ptbjobs.sweep.search import promoted_at_rung

    probe = load_grid(make_grid(tmp_path, "probe", epochs=1)).runs[0].config
    epochs = epochs_lasting(probe, 10, tmp_path / "probe", tiny_corpus)  # the survivor outlasts the USR2 below
    grid_path = tmp_path / "search.toml"
    grid_path.write_text(SEARCH_GRID.format(epochs=epochs))
    grid = load_grid(grid_path)
    sweep = Sweep(tmp_path / "sweep")
    # one run at a time, in the grid's order, as on the local executor (tests/executors/
    # test_search_runs.py): lr0.5 is paused at rung 1 and promoted by lr50's arrival, paused at
    # rung 2 and promoted by lr1's; each time it waits in the sweep until the feeding sends it
    submit(grid, sweep, SlurmExecutor(), data_dir=tiny_corpus)
    # a run past the last rung is a survivor: a preemption's USR2 requeues it in the middle
    survivor = wait_until(lambda: next((spec.key for spec in grid.runs if len([r for r in RunDir(sweep.run_dir(spec.key))
                                        .read_metrics() if "valid_ppl" in r]) >= 3), None), timeout_s=600, every_s=0.2)
    slurm.scancel([sweep.read_manifest()["runs"][survivor]["jobs"][-1]["job_id"]], signal="USR2")
    status = wait_until(lambda: all_ended(sweep), timeout_s=1200, every_s=2)
    rows = {row["key"]: row for row in status["runs"]}
    keys = {spec.config.lr: spec.key for spec in grid.runs}
    assert {lr: (rows[key]["state"], rows[key]["epoch"]) for lr, key in keys.items()} == {
        1.0: (states.PRUNED, 2), 50.0: (states.PRUNED, 1), 0.5: (states.COMPLETED, epochs), 2.0: (states.PRUNED, 1)}
    assert rows[survivor]["state"] == states.COMPLETED and rows[survivor]["attempts"] >= 2
    assert "Caught signal SIGUSR2" in log_text(sweep, survivor)
    for rung in (1, 2):  # who went on is the rule's verdict on the arrivals, in the order Slurm made them
        assert {key for key, row in rows.items() if row["epoch"] > rung} == set(read_rung(sweep.path, rung).went_on(
            "cell=lstm", 0.5))
    def times_paused_and_promoted(key: str) -> int:
        """Rungs where the run was paused at its arrival and promoted by a later one."""
        count = 0
        for rung in (1, 2):
            arrivals = [(a["run"], a["metric"]) for a in read_arrivals(sweep.path, rung)]
            at = next((i for i, (k, _) in enumerate(arrivals) if k == key), None)
            file = read_rung(sweep.path, rung)
            went_on_arriving = key in promoted_at_rung(arrivals[:at + 1], 0.5) if at is not None else False
            went_on_arriving |= file.closed.get("cell=lstm") == key and arrivals[-1][0] == key  # it closed the rung
            if at is not None and key in file.went_on("cell=lstm", 0.5) and not went_on_arriving:
                count += 1
        return count

    manifest = sweep.read_manifest()
    for spec in grid.runs:
        row, jobs = rows[spec.key], manifest["runs"][spec.key]["jobs"]
        epochs_trained = [r["epoch"] for r in RunDir(sweep.run_dir(spec.key)).read_metrics() if "valid_ppl" in r]
        assert epochs_trained == list(range(1, row["epoch"] + 1))  # every epoch once, across pauses and requeues
        assert len(jobs) == 1 + times_paused_and_promoted(spec.key)  # a job for each start, none twice
        if row["state"] == states.COMPLETED:  # paused, promoted, requeued or not: as if never stopped
            train_reference(spec.config, tmp_path / f"reference-{spec.key}", tiny_corpus)
            assert_same_run(tmp_path / f"reference-{spec.key}", sweep.run_dir(spec.key))
