"""submit / status / cancel / retry / logs through typer's CliRunner: exit codes, messages, the
--json schema. Runs that need a real worker are in test_local_executor.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import TINY_MODEL_TOML
from ptbjobs.cli import app, main
from ptbjobs.launch.status import STATUS_SCHEMA_VERSION

runner = CliRunner()

GRID = '''
name = "cli"
[defaults]
''' + TINY_MODEL_TOML + '''epochs = 1
[axes]
cell = ["lstm", "gru"]
seed = [1]
'''


@pytest.fixture
def grid_file(tmp_path) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(GRID)
    return path


def test_a_dry_run_prints_the_plan_and_writes_nothing(tmp_path, grid_file, tiny_corpus):
    sweep_dir = tmp_path / "sweep"
    result = runner.invoke(app, ["submit", "--grid", str(grid_file), "--sweep-dir", str(sweep_dir),
                                 "--data-dir", str(tiny_corpus), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would submit 2 of 2 runs" in result.output
    assert "lstm-d0-s1" in result.output and "gru-d0-s1" in result.output and "submit" in result.output
    assert not sweep_dir.exists()


def test_a_bad_grid_exits_2_with_one_line_and_writes_nothing(tmp_path, grid_file, tiny_corpus, capsys):
    grid_file.write_text(GRID.replace('seed = [1]', 'seed = [1]\ndropout = [1.5]'))
    sweep_dir = tmp_path / "sweep"
    code = main(["submit", "--grid", str(grid_file), "--sweep-dir", str(sweep_dir), "--data-dir", str(tiny_corpus)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ptbjobs: error: {grid_file}:13: axes.dropout: must be in [0, 1), got 1.5"
    assert not sweep_dir.exists()


def test_a_missing_data_folder_is_caught_at_submit(tmp_path, grid_file, capsys):
    code = main(["submit", "--grid", str(grid_file), "--sweep-dir", str(tmp_path / "s"), "--data-dir", str(tmp_path / "no")])
    assert code == 2
    assert "missing data file" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_status_json_follows_the_documented_schema(tmp_path, grid_file, tiny_corpus, capsys, monkeypatch):
    import ptbjobs.executors.local as local
    from ptbjobs.executors.local import LocalExecutor
    from ptbjobs.launch.submit import submit
    from ptbjobs.sweep.folder import Sweep
    from ptbjobs.sweep.grid import load_grid

    sweep = Sweep(tmp_path / "sweep")
    monkeypatch.setattr(local, "ensure_supervisor", lambda sweep: False)  # queue only, run nothing: rows stay PENDING
    submit(load_grid(grid_file), sweep, LocalExecutor(1), data_dir=tiny_corpus)
    result = runner.invoke(app, ["status", "--sweep-dir", str(sweep.path), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["version"] == STATUS_SCHEMA_VERSION and status["sweep"] == "cli"
    assert status["summary"] == {"PENDING": 2}
    assert set(status["runs"][0]) == {"key", "cell", "dropout", "seed", "executor", "job_id", "attempts", "state",
                                      "epoch", "epochs", "train_ppl", "valid_ppl", "best_valid_ppl", "test_ppl",
                                      "elapsed_s", "eta_s", "problem"}
    row = status["runs"][0]
    assert (row["key"], row["job_id"], row["executor"], row["state"], row["epoch"], row["epochs"]) == \
        ("lstm-d0-s1", "L1", "local", "PENDING", 0, 1)
    table = runner.invoke(app, ["status", "--sweep-dir", str(sweep.path)])
    assert "2 runs: 2 PENDING" in table.output

    # a changed config under the same key is refused, and nothing is submitted
    grid_file.write_text(GRID.replace("epochs = 1", "epochs = 2"))
    code = main(["submit", "--grid", str(grid_file), "--sweep-dir", str(sweep.path), "--data-dir", str(tiny_corpus)])
    assert code == 2
    assert "2 run(s) already exist with another config: lstm-d0-s1 (epochs 1 -> 2) (and 1 more) " \
           "(rename the sweep, or add --force" in capsys.readouterr().err
    assert len(sweep.read_manifest()["runs"]["lstm-d0-s1"]["jobs"]) == 1


def test_status_without_a_sweep_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["status"]) == 2
    assert capsys.readouterr().err.strip() == ("ptbjobs: error: no sweep found under ./runs (submit one with "
                                               "`ptbjobs submit --grid FILE`, or give --sweep-dir)")
    for command in (["status"], ["logs", "x"], ["report"], ["cancel"], ["retry"]):
        assert main(command + ["--sweep-dir", "nowhere"]) == 2
        assert capsys.readouterr().err.strip() == ("ptbjobs: error: --sweep-dir nowhere is not a sweep folder (no "
                                                   "manifest.json) (give the folder `ptbjobs submit` made, e.g. runs/<name>)")


def test_logs_of_an_unknown_run_lists_where_to_find_keys(tmp_path, grid_file, tiny_corpus, capsys):
    from ptbjobs.sweep.folder import Sweep

    sweep = Sweep(tmp_path / "sweep")
    sweep.path.mkdir()
    sweep.write_manifest({"version": 1, "name": "x", "runs": {}})
    assert main(["logs", "nope", "--sweep-dir", str(sweep.path)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_force_sets_the_old_run_aside_and_starts_the_changed_config_afresh(tmp_path, grid_file, tiny_corpus):
    import ptbjobs.executors.local as local
    from ptbjobs.executors.local import LocalExecutor
    from ptbjobs.launch.cancel import cancel
    from ptbjobs.launch.submit import RESTART, submit
    from ptbjobs.sweep.folder import Sweep
    from ptbjobs.sweep.grid import load_grid

    sweep = Sweep(tmp_path / "sweep")
    saved, local.ensure_supervisor = local.ensure_supervisor, lambda sweep: False  # queue only, run nothing
    try:
        submit(load_grid(grid_file), sweep, LocalExecutor(1), data_dir=tiny_corpus)
        with pytest.raises(Exception, match="is PENDING"):
            grid_file.write_text(GRID.replace("epochs = 1", "epochs = 2"))
            submit(load_grid(grid_file), sweep, LocalExecutor(1), data_dir=tiny_corpus, force=True)
        assert cancel(sweep) == ["lstm-d0-s1", "gru-d0-s1"]
        planned = submit(load_grid(grid_file), sweep, LocalExecutor(1), data_dir=tiny_corpus, force=True)
    finally:
        local.ensure_supervisor = saved
    assert {p.action for p in planned} == {RESTART}
    entry = sweep.read_manifest()["runs"]["lstm-d0-s1"]
    assert entry["config"]["epochs"] == 2 and [j["job_id"] for j in entry["jobs"]] == ["L3"]
    assert len(list((sweep.path / "_superseded").iterdir())) == 2


def test_only_submits_the_runs_with_those_settings_and_the_sweep_keeps_the_whole_grid(
        tmp_path, grid_file, tiny_corpus, monkeypatch):
    import ptbjobs.executors.local as local
    from ptbjobs.sweep.folder import Sweep

    grid_file.write_text(GRID.replace("seed = [1]", "seed = [1, 2, 3]"))
    monkeypatch.setattr(local, "ensure_supervisor", lambda sweep: False)  # queue only, run nothing
    sweep = Sweep(tmp_path / "sweep")
    submit = ["submit", "--grid", str(grid_file), "--sweep-dir", str(sweep.path), "--data-dir", str(tiny_corpus),
              "--executor", "local"]
    result = runner.invoke(app, submit + ["--only", "cell=gru", "--only", "seed=2", "--only", "seed=3"])
    assert result.exit_code == 0, result.output
    assert "submitted 2 of 2 runs (--only: 2 of the grid's 6)" in result.output
    assert sorted(sweep.read_manifest()["runs"]) == ["gru-d0-s2", "gru-d0-s3"]
    assert (sweep.path / "grid.toml").read_text() == grid_file.read_text()

    result = runner.invoke(app, submit)  # the rest of the grid later, as one sweep
    assert result.exit_code == 0, result.output
    assert "submitted 4 of 6 runs" in result.output
    assert len(sweep.read_manifest()["runs"]) == 6


@pytest.mark.parametrize("only, message", [
    ("seed", "--only seed: not KEY=VALUE (e.g. --only seed=2 --only cell=gru)"),
    ("sead=2", "--only sead=2: 'sead' is not a training setting (did you mean 'seed'?)"),
    ("seed=two", "--only seed=two: seed must be an integer, got 'two'"),
    ("cell=rnn", "--only cell=rnn: cell must be one of lstm, gru; got 'rnn'"),
    ("seed=7", "--only seed=7: no run of {grid} has that seed (its runs have 1)"),
    ("dropout=0.5", "--only dropout=0.5: no run of {grid} has that dropout (its runs have 0.0)"),
])
def test_a_bad_only_exits_2_with_one_line_and_writes_nothing(tmp_path, grid_file, tiny_corpus, capsys, only, message):
    sweep_dir = tmp_path / "sweep"
    code = main(["submit", "--grid", str(grid_file), "--sweep-dir", str(sweep_dir), "--data-dir", str(tiny_corpus),
                 "--only", only])
    assert code == 2
    assert capsys.readouterr().err.strip() == "ptbjobs: error: " + message.format(grid=grid_file)
    assert not sweep_dir.exists()


@pytest.mark.parametrize("extra, code, ended", [("", 0, "COMPLETED"), ("lr = 1e9\nclip = 0\n", 1, "DIVERGED")],
                         ids=["all-complete", "one-diverged"])
def test_submit_wait_exits_1_when_a_run_did_not_complete_and_0_when_all_did(tmp_path, grid_file, tiny_corpus,
                                                                             extra, code, ended):
    grid_file.write_text(GRID.replace('cell = ["lstm", "gru"]', 'cell = ["lstm"]').replace("epochs = 1\n", "epochs = 1\n" + extra))
    sweep_dir = tmp_path / "sweep"
    assert main(["submit", "--grid", str(grid_file), "--sweep-dir", str(sweep_dir), "--data-dir", str(tiny_corpus),
                 "--executor", "local", "--wait"]) == code
    from ptbjobs.launch.status import collect
    from ptbjobs.sweep.folder import Sweep

    assert [row["state"] for row in collect(Sweep(sweep_dir))["runs"]] == [ended]
