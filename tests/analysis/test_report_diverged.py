"""Diverged runs in the report: named as diverged, with the epoch their loss became NaN or infinite,
apart from the incomplete ones; left out of the table, or with --include-incomplete counted up to
their last good epoch and marked in the seeds column."""

from __future__ import annotations

import json

import pytest
from test_report import write_run

from ptbjobs.analysis import report
from ptbjobs.analysis import tables as analysis
from ptbjobs.cli import main
from ptbjobs.core import states
from ptbjobs.sweep.folder import Sweep
from ptbjobs.train.config import TrainConfig
from ptbjobs.train.run_dir import RunDir
from synthetic import make_sweep

# what the trainer writes into state.json (DivergedError's message, ptbjobs/train/trainer.py)
DIVERGED_AT_3 = "training diverged: loss is nan at epoch 3, step 25 (lr 1)"


def diverge(sweep: Sweep, key: str, message: str) -> None:
    RunDir(sweep.run_dir(key)).write_state(states.DIVERGED, message=message)


@pytest.fixture
def sweep_with_a_diverged_run(tmp_path) -> Sweep:
    """The report tests' known sweep (LSTM without dropout: 2 seeds; with dropout 0.3: 1 seed and
    1 unfinished), and a third LSTM seed without dropout that diverged in epoch 3, after 2 epochs."""
    sweep = Sweep(tmp_path / "known")
    sweep.path.mkdir()
    manifest = {"version": 1, "name": "known", "runs": {}}
    write_run(sweep, manifest, TrainConfig(seed=1), [150.0, 120.0, 121.0], [140.0, 90.0, 80.0], 115.0, "cuda")
    write_run(sweep, manifest, TrainConfig(seed=2), [160.0, 124.0, 118.0], [150.0, 95.0, 84.0], 113.0, "cuda")
    diverge(sweep, write_run(sweep, manifest, TrainConfig(seed=3), [170.0, 140.0], [160.0, 100.0], None), DIVERGED_AT_3)
    write_run(sweep, manifest, TrainConfig(seed=1, dropout=0.3), [130.0, 99.0], [160.0, 110.0], 95.0)
    write_run(sweep, manifest, TrainConfig(seed=2, dropout=0.3), [131.0], [161.0], None)
    sweep.write_manifest(manifest)
    return sweep


def test_a_diverged_run_is_named_with_its_epoch_apart_from_the_incomplete_and_left_out(sweep_with_a_diverged_run,
                                                                                         tmp_path):
    made = report.make_report(sweep_with_a_diverged_run, out=tmp_path / "out")
    assert made.diverged == {"lstm-d0-s3": 3} and made.incomplete == ["lstm-d0.3-s2"]
    text = (tmp_path / "out" / "results.md").read_text()
    assert "Incomplete runs, not in the table: lstm-d0.3-s2.\n" in text
    assert "Diverged runs (the loss became NaN or infinite), not in the table: lstm-d0-s3 diverged (epoch 3).\n" in text
    # the completed runs' row is what it is without the diverged run
    assert "| LSTM, dropout 0 | 2 | 82.0 ± 2.8 | 119.0 ± 1.4 | 114.0 ± 1.4 | 2, 3 | < 125 | yes | 3.00 GPU-h |" in text
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["diverged"] == {"lstm-d0-s3": 3} and written["incomplete"] == ["lstm-d0.3-s2"]
    assert list(made.table["diverged_epochs"]) == ["", ""]


def test_with_include_incomplete_a_diverged_run_counts_up_to_its_last_good_epoch_and_is_marked(
        sweep_with_a_diverged_run, tmp_path):
    made = report.make_report(sweep_with_a_diverged_run, out=tmp_path / "out", include_incomplete=True, per_run=True)
    plain = made.table.iloc[0]
    assert plain["seeds"] == 3 and plain["finished"] == 2 and plain["diverged_epochs"] == "3"
    assert plain["final_train_ppl_mean"] == 88.0 and plain["min_valid_ppl_mean"] == 126.0
    assert plain["test_ppl_mean"] == 114.0  # the diverged run has no test perplexity
    text = (tmp_path / "out" / "results.md").read_text()
    assert "| LSTM, dropout 0 | 3 (2 finished, 1 diverged at epoch 3) | 88.0 ± 10.6 | 126.0 ± 12.2 |" in text
    assert "| LSTM, dropout 0.3 | 2 (1 finished) |" in text
    assert ("Diverged runs (the loss became NaN or infinite), their epochs before it counted in the table "
            "(--include-incomplete): lstm-d0-s3 diverged (epoch 3).\n") in text
    assert "Incomplete runs, counted in the table (--include-incomplete): lstm-d0.3-s2.\n" in text
    runs = text.split("## Runs")[1]
    assert "| lstm-d0-s3 | lstm | 0 | 3 | diverged (epoch 3) | 2 |" in runs
    assert "| lstm-d0.3-s2 | lstm | 0.3 | 2 | False | 1 |" in runs
    assert "3 (2 finished, 1 diverged at epoch 3)" in (tmp_path / "out" / "results.tex").read_text()


def test_the_cli_says_which_runs_diverged_and_at_which_epoch(sweep_with_a_diverged_run, tmp_path, capsys):
    sweep = str(sweep_with_a_diverged_run.path)
    assert main(["report", "--sweep-dir", sweep, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "incomplete runs, left out (--include-incomplete to count them): lstm-d0.3-s2\n" in out
    assert "diverged runs, left out (--include-incomplete to count them): lstm-d0-s3 diverged (epoch 3)\n" in out
    assert main(["report", "--sweep-dir", sweep, "--out", str(tmp_path / "b"), "--include-incomplete"]) == 0
    out = capsys.readouterr().out
    assert "incomplete runs, included: lstm-d0.3-s2\n" in out
    assert "diverged runs, included up to their last good epoch: lstm-d0-s3 diverged (epoch 3)\n" in out


def test_several_diverged_runs_of_a_variant_list_their_epochs(sweep_with_a_diverged_run, tmp_path):
    sweep = sweep_with_a_diverged_run
    manifest = sweep.read_manifest()
    key = write_run(sweep, manifest, TrainConfig(seed=4), [165.0], [155.0], None)
    diverge(sweep, key, "training diverged: loss is inf at epoch 2, step 11 (lr 1)")
    sweep.write_manifest(manifest)
    made = report.make_report(sweep, out=tmp_path / "out", include_incomplete=True)
    assert made.diverged == {"lstm-d0-s3": 3, "lstm-d0-s4": 2}
    text = (tmp_path / "out" / "results.md").read_text()
    assert "| LSTM, dropout 0 | 4 (2 finished, 2 diverged at epochs 3, 2) |" in text
    assert "lstm-d0-s3 diverged (epoch 3), lstm-d0-s4 diverged (epoch 2)." in text


def test_a_run_that_diverged_in_its_first_epoch_is_named_though_it_has_no_epoch_to_count(tmp_path, capsys):
    sweep = Sweep(tmp_path / "first")
    sweep.path.mkdir()
    manifest = {"version": 1, "name": "first", "runs": {}}
    write_run(sweep, manifest, TrainConfig(seed=1), [150.0, 120.0], [140.0, 90.0], 115.0)
    diverge(sweep, write_run(sweep, manifest, TrainConfig(seed=2), [], [], None),
            "training diverged: loss is nan at epoch 1, step 3 (lr 1e+09)")
    sweep.write_manifest(manifest)
    assert main(["report", "--sweep-dir", str(sweep.path), "--include-incomplete"]) == 0
    assert "diverged runs, included up to their last good epoch: lstm-d0-s2 diverged (epoch 1)\n" in capsys.readouterr().out
    text = (sweep.path / "results.md").read_text()
    assert "| LSTM, dropout 0 | 1 |" in text  # nothing of it to count
    assert "lstm-d0-s2 diverged (epoch 1)." in text


def test_a_state_without_the_epoch_in_its_message_gives_the_one_after_the_last_recorded(tmp_path):
    """make_sweep's diverged runs say only "training diverged: loss is nan"."""
    sweep = make_sweep(tmp_path / "synthetic", runs=200)
    expected = {}
    for key in sweep.read_manifest()["runs"]:
        run = RunDir(sweep.run_dir(key))
        if (run.read_state() or {}).get("state") == states.DIVERGED:
            expected[key] = len(run.read_metrics()) + 1
    assert expected  # the synthetic sweep has some
    data = analysis.load_sweep(sweep)
    assert data.diverged == expected
    assert not set(expected) & set(analysis.incomplete_runs(data))
    made = report.make_report(sweep, out=tmp_path / "out")
    text = (tmp_path / "out" / "results.md").read_text()
    for key, epoch in expected.items():
        assert f"{key} diverged (epoch {epoch})" in text
    assert int(made.table["seeds"].sum()) == int(data.runs["complete"].sum())
