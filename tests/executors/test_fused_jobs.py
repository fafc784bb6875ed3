"""`fuse = true` on the local executor, for real: packs of runs of one shape train as one fused
model in one job, each run stays an ordinary run, and a pack killed with SIGKILL resumes exactly."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

from conftest import TINY_MODEL_TOML
from helpers import all_ended, assert_same_run, wait_until
from ptbjobs.cli.main import main
from ptbjobs.core import states
from ptbjobs.executors.local import LocalExecutor, local_folder
from ptbjobs.launch.cancel import cancel
from ptbjobs.launch.status import collect
from ptbjobs.launch.submit import retry, submit
from ptbjobs.sweep.folder import Sweep
from ptbjobs.sweep.grid import load_grid
from ptbjobs.train.run_dir import RunDir
from ptbjobs.train.runner import run_training

GRID = '''
name = "fused"
[defaults]
''' + TINY_MODEL_TOML + '''epochs = {epochs}
decay_after = 1
checkpoint_every_min = 0
checkpoint_every_steps = 10
[axes]
seed = {seeds}
cell = {cells}
[resources]
runs_per_gpu = {per_pack}
fuse = true
cpus_per_task = 1
'''


def fused_grid(tmp_path: Path, name: str, epochs: int, seeds: str, cells: str, per_pack: int):
    path = tmp_path / f"{name}.toml"
    path.write_text(GRID.format(epochs=epochs, seeds=seeds, cells=cells, per_pack=per_pack))
    return load_grid(path)


def job_ids(sweep: Sweep) -> dict[str, list[str]]:
    return {key: [job["job_id"] for job in entry["jobs"]] for key, entry in sweep.read_manifest()["runs"].items()}


def test_each_pack_of_one_shape_trains_as_one_job_and_each_run_stays_an_ordinary_run(tmp_path, tiny_corpus, capsys):
    # seeds first: the grid lists lstm and gru runs in turn; packs of 3 are cut after ordering by shape
    grid = fused_grid(tmp_path, "mixed", epochs=2, seeds="[1, 2]", cells='["lstm", "gru"]', per_pack=3)
    sweep = Sweep(tmp_path / "sweep")
    submit(grid, sweep, LocalExecutor(max_parallel=1), data_dir=tiny_corpus)
    status = wait_until(lambda: all_ended(sweep))
    assert [r["state"] for r in status["runs"]] == [states.COMPLETED] * 4
    assert job_ids(sweep) == {"lstm-d0-s1": ["L1"], "lstm-d0-s2": ["L1"], "gru-d0-s1": ["L1"], "gru-d0-s2": ["L2"]}
    job_log = (local_folder(sweep) / "jobs" / "L1.log").read_text()
    assert "fused runs lstm-d0-s1, lstm-d0-s2, gru-d0-s1" in job_log
    for key in ["lstm-d0-s1", "lstm-d0-s2", "gru-d0-s1"]:
        own = (sweep.run_dir(key) / "logs" / "L1.log").read_text()
        assert "epoch 2/2" in own and not any(other in own for other in job_ids(sweep) if other != key)
        assert (sweep.run_dir(key) / "logs" / "L1.exit").read_text() == "0\n"
    # the fused lstm runs train as their solo runs would, within float rounding
    for spec in grid.runs:
        if spec.config.cell.value == "lstm":
            solo = tmp_path / f"solo-{spec.key}"
            run_training(spec.config, solo, tiny_corpus, handle_signals=False)
            fused = [r["valid_ppl"] for r in RunDir(sweep.run_dir(spec.key)).read_metrics() if "valid_ppl" in r]
            alone = [r["valid_ppl"] for r in RunDir(solo).read_metrics() if "valid_ppl" in r]
            assert len(fused) == len(alone) == 2 and all(math.isclose(f, a, rel_tol=1e-3) for f, a in zip(fused, alone))
    # every command sees ordinary runs
    assert main(["logs", "lstm-d0-s2", "--sweep-dir", str(sweep.path)]) == 0
    assert "epoch 2/2" in capsys.readouterr().out
    assert main(["report", "--sweep-dir", str(sweep.path), "--out", str(tmp_path / "report")]) == 0


def test_a_fused_pack_killed_with_sigkill_shows_failed_and_retry_ends_each_run_as_if_never_killed(tmp_path, tiny_corpus):
    grid = fused_grid(tmp_path, "killed", epochs=8, seeds="[1, 2]", cells='["lstm"]', per_pack=2)
    killed, untouched = Sweep(tmp_path / "killed"), Sweep(tmp_path / "untouched")
    submit(grid, killed, LocalExecutor(max_parallel=1), data_dir=tiny_corpus)
    for key in ("lstm-d0-s1", "lstm-d0-s2"):
        wait_until(lambda: list((killed.run_dir(key) / "checkpoints").glob("ckpt-*.pt")), timeout_s=120, every_s=0.1)
    record = wait_until(lambda: _running(killed, "L1"))
    os.kill(record["pid"], signal.SIGKILL)
    status = wait_until(lambda: all_ended(killed))
    assert [r["state"] for r in status["runs"]] == [states.FAILED] * 2
    submit(grid, untouched, LocalExecutor(max_parallel=1), data_dir=tiny_corpus)  # the reference, meanwhile
    assert retry(killed).submitted == {"lstm-d0-s1": "L2", "lstm-d0-s2": "L2"}  # one pack again
    for sweep in (killed, untouched):
        status = wait_until(lambda: all_ended(sweep), timeout_s=300)
        assert [r["state"] for r in status["runs"]] == [states.COMPLETED] * 2
    for key in ("lstm-d0-s1", "lstm-d0-s2"):
        assert "resuming from" in (killed.run_dir(key) / "logs" / "L2.log").read_text()
        assert_same_run(untouched.run_dir(key), killed.run_dir(key))


def _running(sweep: Sweep, job_id: str) -> dict | None:
    from ptbjobs.core.atomic import read_json_if_any

    record = read_json_if_any(local_folder(sweep) / "jobs" / f"{job_id}.json")
    return record if record and record.get("state") == states.RUNNING else None


def test_a_run_cancelled_alone_leaves_its_pack_with_its_state_saved_and_the_others_train_on(tmp_path, tiny_corpus):
    grid = fused_grid(tmp_path, "leave", epochs=16, seeds="[1, 2, 3]", cells='["lstm"]', per_pack=3)
    sweep = Sweep(tmp_path / "sweep")
    submit(grid, sweep, LocalExecutor(max_parallel=1), data_dir=tiny_corpus)
    wait_until(lambda: list((sweep.run_dir("lstm-d0-s2") / "checkpoints").glob("ckpt-*.pt")), timeout_s=120, every_s=0.1)
    assert cancel(sweep, ["lstm-d0-s2"]) == ["lstm-d0-s2"]  # the job is not cancelled: its other runs go on
    during = wait_until(lambda: _states_if(sweep, "lstm-d0-s2", states.CANCELLED), every_s=0.1)
    assert during["lstm-d0-s1"] == during["lstm-d0-s3"] == states.RUNNING
    status = wait_until(lambda: all_ended(sweep), timeout_s=300)
    assert {r["key"]: r["state"] for r in status["runs"]} == {
        "lstm-d0-s1": states.COMPLETED, "lstm-d0-s2": states.CANCELLED, "lstm-d0-s3": states.COMPLETED}
    left = RunDir(sweep.run_dir("lstm-d0-s2"))
    assert left.read_state()["state"] == states.INTERRUPTED and 0 < left.read_state()["step"]
    assert "cancelled at step" in (sweep.run_dir("lstm-d0-s2") / "logs" / "L1.log").read_text()
    assert retry(sweep).submitted == {"lstm-d0-s2": "L2"}  # alone: its pack-mates have finished
    status = wait_until(lambda: all_ended(sweep), timeout_s=300)
    assert [r["state"] for r in status["runs"]] == [states.COMPLETED] * 3
    assert "resuming from" in (sweep.run_dir("lstm-d0-s2") / "logs" / "L2.log").read_text()
    assert len(left.read_metrics()) == 16 + 1  # every epoch once, and the final record
    assert job_ids(sweep) == {"lstm-d0-s1": ["L1"], "lstm-d0-s2": ["L1", "L2"], "lstm-d0-s3": ["L1"]}


def _states_if(sweep: Sweep, key: str, state: str) -> dict[str, str] | None:
    found = {r["key"]: r["state"] for r in collect(sweep)["runs"]}
    return found if found[key] == state else None
