"""The sweep index (finished runs read once) and the manifest journal (a change costs a line)."""

from __future__ import annotations

import json
import os
import time

from ptbjobs.core import states
from ptbjobs.core.atomic import read_records
from ptbjobs.launch import run_states as run_states_module
from ptbjobs.launch import status as status_module
from ptbjobs.launch.status import collect
from ptbjobs.sweep import folder as folder_module
from ptbjobs.sweep.folder import Sweep
from ptbjobs.sweep.index import FINISHED, index_path
from synthetic import make_sweep


def _age(sweep: Sweep, seconds: float = 3600) -> None:
    """Every file of the sweep made older, as runs that finished an hour ago (a file changed within
    a moment of the look that read it waits for the next look to be indexed)."""
    past = time.time() - seconds
    for path in sweep.path.rglob("*"):
        os.utime(path, (past, past))


def _reads(monkeypatch) -> list[str]:
    """The runs whose folders status reads (state.json for its state, metrics.jsonl for its row)."""
    read: list[str] = []
    real_state, real_summary = run_states_module._folder_state, status_module._metrics_summary
    monkeypatch.setattr(run_states_module, "_folder_state", lambda run: read.append(run.path.name) or real_state(run))
    monkeypatch.setattr(status_module, "_metrics_summary", lambda run: read.append(run.path.name) or real_summary(run))
    return read


def _indexed_keys(sweep: Sweep) -> list[str]:
    """The run key of each whole line of the index (its second item)."""
    return [line[1] for line in read_records(index_path(sweep))[0]]


def test_a_finished_run_is_indexed_once_and_its_folder_never_read_again(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path / "s", runs=40)
    _age(sweep)
    first = collect(sweep)
    finished = {r["key"] for r in first["runs"] if r["state"] in FINISHED}
    assert finished and set(_indexed_keys(sweep)) == finished
    read = _reads(monkeypatch)
    second = collect(sweep)
    assert second["runs"] == first["runs"]  # the same rows, from the index
    assert set(read) == {r["key"] for r in first["runs"]} - finished  # only the runs not finished
    assert len(_indexed_keys(sweep)) == len(finished)  # nothing indexed twice


def test_a_run_that_finished_a_moment_ago_is_indexed_at_the_next_look(tmp_path):
    sweep = make_sweep(tmp_path / "s", runs=12)  # every file written just now
    collect(sweep)
    assert not index_path(sweep).exists() or not _indexed_keys(sweep)
    _age(sweep)
    collect(sweep)
    assert _indexed_keys(sweep)


def test_a_run_damaged_after_it_was_indexed_is_shown_damaged_not_as_indexed(tmp_path):
    sweep = make_sweep(tmp_path / "s", runs=40)
    _age(sweep)
    key = next(r["key"] for r in collect(sweep)["runs"] if r["state"] == states.COMPLETED)
    metrics = sweep.run_dir(key) / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-30])  # cut short by a full disk, say
    row = next(r for r in collect(sweep)["runs"] if r["key"] == key)
    assert row["state"] == states.DAMAGED and "metrics.jsonl" in row["problem"]


def test_a_run_started_afresh_after_it_was_indexed_is_not_shown_as_finished(tmp_path):
    sweep = make_sweep(tmp_path / "s", runs=40)
    _age(sweep)
    key = next(r["key"] for r in collect(sweep)["runs"] if r["state"] == states.COMPLETED)
    # what `submit --force` does to a run whose config changed: its folder set aside, a new job queued
    os.rename(sweep.run_dir(key), tmp_path / "aside")
    sweep.run_dir(key).mkdir()
    (sweep.path / "local" / "jobs" / "L999.json").write_text(json.dumps(
        {"job_id": "L999", "number": 999, "run": key, "state": states.PENDING}))
    with sweep.locked():
        manifest = sweep.read_manifest()
        manifest["runs"][key]["jobs"].append({"job_id": "L999", "executor": "local", "submitted": time.time()})
        sweep.update_manifest(manifest, [key])
    row = next(r for r in collect(sweep)["runs"] if r["key"] == key)
    assert row["state"] == states.PENDING and row["job_id"] == "L999" and row["test_ppl"] is None


def test_a_cut_line_of_the_index_costs_only_its_own_run(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path / "s", runs=40)
    _age(sweep)
    first = collect(sweep)
    lines = index_path(sweep).read_bytes().splitlines(keepends=True)
    index_path(sweep).write_bytes(b"".join(lines[:-1]) + lines[-1][:25])  # a crash mid-append
    read = _reads(monkeypatch)
    assert collect(sweep)["runs"] == first["runs"]
    cut = json.loads(lines[-1])[1]
    assert cut in read and len(set(read) & {json.loads(line)[1] for line in lines}) == 1
    assert _indexed_keys(sweep)[-1] == cut  # indexed again, on a line of its own after the cut one


def test_the_manifest_journal_records_a_change_as_a_line_and_folds_in_when_large(tmp_path, monkeypatch):
    sweep = Sweep(tmp_path / "s")
    with sweep.locked():
        manifest = sweep.read_manifest()
        for n in range(3):
            manifest["runs"][f"r{n}"] = {"config": {"seed": n}, "config_hash": str(n), "point": {}, "jobs": []}
        sweep.update_manifest(manifest, ["r0", "r1", "r2"], name="s")  # a new sweep: manifest.json itself
        written = sweep.manifest_path.read_bytes()
        manifest["runs"]["r1"]["jobs"].append({"job_id": "L1", "executor": "local", "submitted": 1.0})
        sweep.update_manifest(manifest, ["r1"])
    assert sweep.manifest_path.read_bytes() == written  # one job id: a line of the journal
    assert len(sweep.journal_path.read_text().splitlines()) == 1
    assert sweep.read_manifest()["runs"] == manifest["runs"]
    with open(sweep.journal_path, "ab") as journal:
        journal.write(b'{"run": "r2", "entry": {"conf')  # a crash mid-append: skipped, and the next line starts anew
    with sweep.locked():
        manifest["runs"]["r0"]["jobs"].append({"job_id": "L2", "executor": "local", "submitted": 2.0})
        sweep.update_manifest(manifest, ["r0"])
    assert sweep.read_manifest()["runs"] == manifest["runs"]
    monkeypatch.setattr(folder_module, "COMPACT_AFTER_BYTES", 10)
    folded = []
    for n in range(3, 40):  # once the journal outgrows manifest.json, it is folded into it and emptied
        with sweep.locked():
            manifest["runs"]["r2"]["jobs"].append({"job_id": f"L{n}", "executor": "local", "submitted": float(n)})
            sweep.update_manifest(manifest, ["r2"])
        folded.append(sweep.journal_path.read_bytes() == b"")
        assert sweep.read_manifest()["runs"] == manifest["runs"]
    assert any(folded) and not all(folded) and json.loads(sweep.manifest_path.read_text())["version"] == 2
