"""The sweep index (finished runs read once) and the manifest journal (a change costs a line)."""

from __future__ import annotations

import json
import os
import pickle
import time

import pytest

from ptbjobs.core import states
from ptbjobs.core.atomic import read_records
from ptbjobs.launch import run_states as run_states_module
from ptbjobs.launch import status as status_module
from ptbjobs.launch.status import collect
from ptbjobs.sweep import folder as folder_module
from ptbjobs.sweep import index as index_module
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


def _snapshotted(tmp_path, monkeypatch) -> tuple[Sweep, list[dict]]:
    """A sweep whose finished runs are indexed, with the snapshot taken (at any size here)."""
    monkeypatch.setattr(index_module, "_SNAPSHOT_AFTER_BYTES", 1)
    sweep = make_sweep(tmp_path / "s", runs=40)
    _age(sweep)
    rows = collect(sweep)["runs"]
    assert (sweep.path / index_module.SNAPSHOT_FILE).exists()
    return sweep, rows


def test_the_index_snapshot_is_read_instead_of_the_journal_it_covers(tmp_path, monkeypatch):
    sweep, rows = _snapshotted(tmp_path, monkeypatch)
    parsed: list[bytes] = []
    real_parse = index_module._parse
    monkeypatch.setattr(index_module, "_parse", lambda data: parsed.append(data) or real_parse(data))
    assert collect(sweep)["runs"] == rows
    assert parsed == [b""]  # the journal past the snapshot only: nothing
    # a run indexed after the snapshot is read from the journal's tail, the others still from the snapshot
    finished = [r["key"] for r in rows if r["state"] in FINISHED]
    line = json.loads(next(line for line in index_path(sweep).read_text().splitlines() if json.loads(line)[1] == finished[0]))
    line[-1] = 12345.0  # elapsed_s, as if indexed again with another figure
    with open(index_path(sweep), "a") as journal:
        journal.write(json.dumps(line) + "\n")
    parsed.clear()
    again = {r["key"]: r for r in collect(sweep)["runs"]}
    assert again[finished[0]]["elapsed_s"] == 12345.0 and len(parsed) == 1 and parsed[0].count(b"\n") == 1
    assert [again[r["key"]] for r in rows if r["key"] != finished[0]] == [r for r in rows if r["key"] != finished[0]]


PLANTED_CALLS: list[str] = []


def _planted_call(what: str) -> None:
    PLANTED_CALLS.append(what)


class _Planted:
    """What a hostile snapshot might hold: a pickle that calls a function when loaded."""

    def __reduce__(self):
        return (_planted_call, ("ran",))


@pytest.mark.parametrize("damage", ["garbage", "cut", "a pickle that runs code"])
def test_a_damaged_or_hostile_snapshot_is_passed_over_for_the_journal(tmp_path, monkeypatch, damage):
    sweep, rows = _snapshotted(tmp_path, monkeypatch)
    path = sweep.path / index_module.SNAPSHOT_FILE
    data = path.read_bytes()
    header = data[:data.index(b"\n") + 1]
    path.write_bytes({"garbage": b"\x00not a snapshot\xff" * 10, "cut": data[:len(data) // 2],
                      "a pickle that runs code": header + pickle.dumps((index_module.INDEX_FORMAT, b"", [_Planted()]))}[damage])
    monkeypatch.setattr(index_module, "_SNAPSHOT_AFTER_BYTES", 1 << 30)  # no new snapshot over the damaged one
    assert collect(sweep)["runs"] == rows
    assert PLANTED_CALLS == []


def test_a_journal_begun_anew_is_not_read_through_the_old_snapshot(tmp_path, monkeypatch):
    sweep, rows = _snapshotted(tmp_path, monkeypatch)
    monkeypatch.setattr(index_module, "_SNAPSHOT_AFTER_BYTES", 1 << 30)
    lines = [json.loads(line) for line in index_path(sweep).read_text().splitlines()]
    changed = lines[-1][1]
    lines[-1][-1] = 777.0  # elapsed_s: a figure only the new journal has
    index_path(sweep).write_text("".join(json.dumps(line) + "\n" for line in [lines[-1], *lines[:-1]]))
    assert next(r for r in collect(sweep)["runs"] if r["key"] == changed)["elapsed_s"] == 777.0
    index_path(sweep).unlink()  # and no journal at all: every finished run is read from its folder again
    read = _reads(monkeypatch)
    assert collect(sweep)["runs"] == rows and set(read) == {r["key"] for r in rows}


def test_status_json_writes_the_snapshot_rows_text_exactly_as_encoding_them_would(tmp_path, monkeypatch):
    sweep, _ = _snapshotted(tmp_path, monkeypatch)
    collected = collect(sweep)
    kept = [row for row in collected["runs"] if getattr(row, "text", None)]
    assert len(kept) == len([r for r in collected["runs"] if r["state"] in FINISHED])  # every finished run's text kept
    assert status_module.status_json(collected) == json.dumps(collected)
