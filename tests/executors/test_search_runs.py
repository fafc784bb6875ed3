"""A search's rungs on the local executor, for real: runs paused at a rung by the ASHA rule, promoted
later, and resumed bit for bit; and the judge's own guarantees (one arrival per run and rung, a
paused run's state written under the lock, a promoted run waiting for its paused process to exit)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from conftest import TINY_MODEL_TOML, TINY_SEARCH_TOML, write_corpus
from helpers import all_ended, assert_same_run, comparable, wait_until
from ptbjobs.analysis.report import make_report
from ptbjobs.core import states
from ptbjobs.core.atomic import try_exclusive_lock
from ptbjobs.core.errors import PtbjobsError
from ptbjobs.executors.local import LocalExecutor
from ptbjobs.executors.rungs import RungJudge
from ptbjobs.launch.status import collect, plain_table, summary_line
from ptbjobs.launch.submit import SKIP_COMPLETED, SKIP_PRUNED, plan, retry, submit
from ptbjobs.sweep.arrivals import read_arrivals, read_rung, rung_path
from ptbjobs.sweep.folder import Sweep
from ptbjobs.sweep.grid import load_grid
from ptbjobs.sweep.search import promoted_at_rung
from ptbjobs.train.run_dir import RunDir
from ptbjobs.train.runner import exclusive, run_training

# lr 50 is hopeless (its perplexity explodes in the first epoch); the others learn, lr 0.5 best,
# then lr 1, then lr 2. With keep 1/2 and one run at a time, the jobs run in the order submitted,
# a promoted run's ahead of those not started (worked by hand in the test below).
SEARCH_GRID = '''
name = "tiny-search"
[defaults]
''' + TINY_MODEL_TOML + '''epochs = 4
decay_after = 1
checkpoint_every_min = 0
''' + TINY_SEARCH_TOML


@pytest.fixture(scope="module")
def search_sweep(tmp_path_factory):
    """The search run once for the tests that read it: (grid, sweep, status rows by key, data)."""
    folder = tmp_path_factory.mktemp("search")
    data = write_corpus(folder / "data")
    grid_path = folder / "search.toml"
    grid_path.write_text(SEARCH_GRID)
    grid = load_grid(grid_path)
    sweep = Sweep(folder / "sweep")
    submit(grid, sweep, LocalExecutor(max_parallel=1), data_dir=data)
    status = wait_until(lambda: all_ended(sweep), timeout_s=300)
    return grid, sweep, {row["key"]: row for row in status["runs"]}, data


def test_runs_behind_at_a_rung_are_paused_and_promoted_when_later_runs_put_them_ahead(search_sweep, tmp_path):
    grid, sweep, rows, tiny_corpus = search_sweep
    keys = {spec.config.lr: spec.key for spec in grid.runs}
    # rung 1: lr0.5 arrives alone (the best floor(1/2) = 0 go on): paused. lr50 arrives: lr0.5 is
    # the best of 2 and is promoted, ahead of lr2 and lr1, not started yet; lr50 paused. lr0.5
    # reaches rung 2 alone and is paused (two more may reach rung 1). lr2, third of 3, is paused;
    # lr1, second of 4 (floor(4/2) = 2 go on), goes on and reaches rung 2 behind lr0.5, which
    # promotes lr0.5 and pauses lr1. lr0.5 resumes and completes.
    assert {lr: (rows[key]["state"], rows[key]["epoch"]) for lr, key in keys.items()} == {
        1.0: (states.PRUNED, 2), 50.0: (states.PRUNED, 1), 0.5: (states.COMPLETED, 4), 2.0: (states.PRUNED, 1)}
    assert [a["run"] for a in read_arrivals(sweep.path, 1)] == [keys[0.5], keys[50.0], keys[2.0], keys[1.0]]
    assert [a["run"] for a in read_arrivals(sweep.path, 2)] == [keys[0.5], keys[1.0]]
    # the jobs in the order they started: lr0.5's first promotion (L5) ahead of lr2's and lr1's
    # jobs (L3, L4), queued since the submit
    records = [json.loads(p.read_text()) for p in (sweep.path / "local" / "jobs").glob("L?.json")]
    assert [r["job_id"] for r in sorted(records, key=lambda r: r["started"])] == ["L1", "L2", "L5", "L3", "L4", "L6"]
    assert read_arrivals(sweep.path, 1)[1]["metric"] > 1e6  # lr50 blew up
    # the verdicts are the rule's, applied to what the runs recorded
    for epoch in (1, 2):
        arrivals = [(a["run"], a["metric"]) for a in read_arrivals(sweep.path, epoch)]
        went_on = {key for key, row in rows.items() if row["epoch"] > epoch}
        assert set(promoted_at_rung(arrivals, 0.5)) == went_on and not read_rung(sweep.path, epoch).closed
    # paused and promoted at both rungs, lr0.5 ends exactly as if never paused; lr1, paused at
    # rung 2, holds the same two epochs as a run never paused
    reference = tmp_path / "reference"
    spec = next(s for s in grid.runs if s.config.lr == 0.5)
    run_training(spec.config, reference, tiny_corpus, handle_signals=False)
    assert_same_run(reference, sweep.run_dir(keys[0.5]))
    spec = next(s for s in grid.runs if s.config.lr == 1.0)
    run_training(spec.config.replace(epochs=2), tmp_path / "lr1", tiny_corpus, handle_signals=False)
    assert comparable(RunDir(sweep.run_dir(keys[1.0])).read_metrics()) == \
        comparable(RunDir(tmp_path / "lr1").read_metrics()[:-1])
    assert rows[keys[0.5]]["attempts"] == 3 and rows[keys[1.0]]["attempts"] == 1
    # status: each rung's counts, and the last rung each run reached (lr0.5 promoted from its pause there)
    status = collect(sweep)
    assert status["search"]["rungs"] == [{"epoch": 1, "reached": 4, "went_on": 2},
                                         {"epoch": 2, "reached": 2, "went_on": 1}]
    assert status["search"]["runs"] == {
        keys[1.0]: {"rung": 2, "promoted": False}, keys[50.0]: {"rung": 1, "promoted": False},
        keys[0.5]: {"rung": 2, "promoted": True}, keys[2.0]: {"rung": 1, "promoted": False}}
    assert "search: epoch 1: 4 reached, 2 went on; epoch 2: 2 reached, 1 went on" in summary_line(status)
    assert plain_table(status).splitlines()[1].rstrip().endswith("rung")


def test_the_report_of_a_search_names_each_groups_best_run_and_the_compute_it_saved(search_sweep, tmp_path):
    grid, sweep, rows, _ = search_sweep
    made = make_report(sweep, tmp_path / "report")
    best = made.search.best.iloc[0]
    assert (best["group"], best["key"], best["complete"]) == ("cell=lstm", next(
        spec.key for spec in grid.runs if spec.config.lr == 0.5), True)
    assert best["min_valid_ppl"] == rows[best["key"]]["best_valid_ppl"]
    # 2 + 1 + 4 + 1 = 8 of the 16 epochs the four runs would have trained: half, give or take each
    # run's own time per epoch
    assert sum(row["epoch"] for row in rows.values()) == 8
    assert 0.3 < made.search.ratio < 0.7 and made.search.used_hours < made.search.full_hours
    text = (tmp_path / "report" / "search.md").read_text()
    assert "| cell=lstm | " + best["key"] + " | lr 0.5 |" in text and "went on" in text
    for suffix in ("png", "svg"):
        assert (tmp_path / "report" / "figures" / f"search-cell-lstm.{suffix}").stat().st_size > 1000


def test_paused_runs_are_left_paused_by_a_new_submit_and_by_retry(search_sweep):
    grid, sweep, rows, tiny_corpus = search_sweep
    actions = {p.spec.key: p.action for p in plan(grid, sweep)}
    assert sorted(actions.values()) == [SKIP_COMPLETED] + [SKIP_PRUNED] * 3
    assert retry(sweep).submitted == {}
    assert submit(grid, sweep, LocalExecutor(max_parallel=1), data_dir=tiny_corpus) and \
        len(list((sweep.path / "local" / "jobs").glob("L*.end.json"))) == 6  # no job started


def _judge(sweep_dir: Path, key: str, group: str = "cell=lstm", rungs=(2,), group_size=None) -> RungJudge:
    run_dir = sweep_dir / key
    RunDir(run_dir).create()
    return RungJudge(run_dir, {"rungs": list(rungs), "keep": 0.5, "metric": "valid_ppl", "group": group,
                               "config": key, "group_size": group_size})


def test_a_run_judged_again_at_a_rung_keeps_its_first_arrival_and_groups_are_judged_apart(tmp_path):
    sweep_dir = tmp_path / "sweep"
    a, b, c = (_judge(sweep_dir, key) for key in ("a", "b", "c"))
    other = _judge(sweep_dir, "g", group="cell=gru")
    assert a(1, {"valid_ppl": 100.0}) is True  # not a rung: nothing recorded
    assert not rung_path(sweep_dir, 1).exists()
    assert a(2, {"valid_ppl": 100.0}) is False
    assert RunDir(sweep_dir / "a").read_state()["state"] == states.PRUNED
    assert a(2, {"valid_ppl": 50.0}) is False  # resumed at the rung: its first metric stands
    assert b(2, {"valid_ppl": 120.0}) is False  # a is the best of two, and is promoted
    assert RunDir(sweep_dir / "a").read_state()["state"] == states.INTERRUPTED
    assert other(2, {"valid_ppl": 10.0}) is False  # alone in its group, however good
    assert c(2, {"valid_ppl": 110.0}) is False  # the best floor(3/2) = 1 of three is a
    d = _judge(sweep_dir, "d")
    assert d(2, {"valid_ppl": 90.0}) is True  # the best of four: floor(4/2) = 2 go on, d and a
    assert RunDir(sweep_dir / "c").read_state()["state"] == states.PRUNED
    assert [(x["run"], x["metric"]) for x in read_arrivals(sweep_dir, 2)] == \
        [("a", 100.0), ("b", 120.0), ("g", 10.0), ("c", 110.0), ("d", 90.0)]
    assert a(2, {"valid_ppl": 100.0}) is True  # the promoted run, resumed at the rung, goes on


def test_a_promoted_run_waits_for_the_process_it_paused_to_let_go_of_the_folder(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create()
    with open(run.path / ".train.lock", "a") as held:
        assert try_exclusive_lock(held)
        with pytest.raises(PtbjobsError, match="being trained by another process"):
            with exclusive(run):
                pass  # a run not promoted: refused at once
        run.write_state(states.INTERRUPTED, promoted=2, message="promoted")
        threading.Timer(0.5, held.close).start()  # the paused process exits
        started = time.monotonic()
        with exclusive(run):
            assert time.monotonic() - started >= 0.4


def test_a_fused_pack_lets_its_paused_runs_go_and_trains_the_others_on(tmp_path, tiny_corpus):
    grid_path = tmp_path / "fused.toml"
    grid_path.write_text(SEARCH_GRID + "[resources]\nruns_per_gpu = 4\nfuse = true\ncpus_per_task = 1\n")
    grid = load_grid(grid_path)
    sweep = Sweep(tmp_path / "sweep")
    submit(grid, sweep, LocalExecutor(max_parallel=1), data_dir=tiny_corpus)
    rows = {row["key"]: row for row in wait_until(lambda: all_ended(sweep), timeout_s=300)["runs"]}
    keys = {spec.config.lr: spec.key for spec in grid.runs}
    # the pack judges its runs in its order at rung 1, as the solo jobs arrived above: the same verdicts
    assert {lr: (rows[key]["state"], rows[key]["epoch"]) for lr, key in keys.items()} == {
        1.0: (states.PRUNED, 2), 50.0: (states.PRUNED, 1), 0.5: (states.COMPLETED, 4), 2.0: (states.PRUNED, 1)}
    jobs = {key: [job["job_id"] for job in entry["jobs"]] for key, entry in sweep.read_manifest()["runs"].items()}
    assert jobs[keys[50.0]] == jobs[keys[2.0]] == jobs[keys[1.0]] == ["L1"]  # paused in the pack, never sent again
    assert jobs[keys[0.5]] == ["L1", "L2"]  # paused first in the pack, promoted by lr50 there, and on its own since
    for key in keys.values():  # every run of the pack ended cleanly, as far as its own exit code goes
        assert (sweep.run_dir(key) / "logs" / "L1.exit").read_text() == "0\n"


def test_a_rung_every_run_of_its_group_has_reached_lets_its_best_go_on_and_a_diverged_run_counts_there(tmp_path):
    sweep_dir = tmp_path / "sweep"
    a, b, c = (_judge(sweep_dir, key, rungs=(2, 4), group_size=3) for key in ("a", "b", "c"))
    assert a(2, {"valid_ppl": 100.0}) is False  # 1 of 3 arrived: floor(1/2) = 0 go on, and more may come
    b.diverged(1)  # b's loss blew up in epoch 2: it arrives at rung 2 as the worst, and never goes on
    assert read_arrivals(sweep_dir, 2)[-1]["run"] == "b" and RunDir(sweep_dir / "a").read_state()["state"] == \
        states.INTERRUPTED  # two arrived: a is the best of them, promoted
    assert c(2, {"valid_ppl": 90.0}) is True  # three: floor(3/2) = 1, and c is now the best
    # rung 4: a and c went on from rung 2, so two are to arrive. The first alone is no verdict yet
    assert c(4, {"valid_ppl": 80.0}) is False and not read_rung(sweep_dir, 4).closed
    assert a(4, {"valid_ppl": 85.0}) is False  # two of two: c goes on by the rule (floor(2/2) = 1)
    assert RunDir(sweep_dir / "c").read_state()["state"] == states.INTERRUPTED
    # a group of one: its only run arrives alone at every rung, the rung closes, and it goes on
    alone = _judge(sweep_dir, "alone", group="cell=gru", rungs=(2, 4), group_size=1)
    assert alone(2, {"valid_ppl": 120.0}) is True and alone(4, {"valid_ppl": 110.0}) is True
    assert read_rung(sweep_dir, 2).closed == {"cell=gru": "alone"}
    # a group whose size is not known never closes a rung: its first arrival waits, as the rule says
    unknown = _judge(sweep_dir, "x", group="cell=other", rungs=(2,))
    assert unknown(2, {"valid_ppl": 50.0}) is False


def test_the_last_arrival_at_a_rung_closes_the_rung_above_where_a_run_waits_for_it(tmp_path):
    sweep_dir = tmp_path / "sweep"
    a, b, c = (_judge(sweep_dir, key, rungs=(2, 4), group_size=3) for key in ("a", "b", "c"))
    assert a(2, {"valid_ppl": 100.0}) is False
    assert b(2, {"valid_ppl": 110.0}) is False  # a, the best of two, is promoted
    assert a(4, {"valid_ppl": 90.0}) is False  # alone at rung 4, while c may still reach rung 2
    assert RunDir(sweep_dir / "a").read_state()["state"] == states.PRUNED
    # c, the worst, reaches rung 2: no more can come to rung 4 than a, and a goes on from there
    assert c(2, {"valid_ppl": 120.0}) is False
    assert RunDir(sweep_dir / "a").read_state()["state"] == states.INTERRUPTED
    assert read_rung(sweep_dir, 4).closed == {"cell=lstm": "a"}
    assert a(4, {"valid_ppl": 90.0}) is True  # resumed at rung 4, it goes on
