"""The report from synthetic run folders with known metrics: exact table values, golden Markdown and
LaTeX, figure files and the matplotlib objects behind them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import pytest

from ptbjobs.analysis import figures, report
from ptbjobs.analysis import tables as analysis
from ptbjobs.cli import main
from ptbjobs.core import states
from ptbjobs.sweep.folder import Sweep
from ptbjobs.sweep.grid import config_hash
from ptbjobs.train.config import TrainConfig
from ptbjobs.train.run_dir import RunDir

GOLDEN = Path(__file__).parent / "golden"


def write_run(sweep: Sweep, manifest: dict, config: TrainConfig, valid: list[float], train: list[float],
              test: float | None, device: str = "cpu") -> str:
    key = f"{config.cell.value}-d{config.dropout:g}-s{config.seed}"
    manifest["runs"][key] = {"config": config.to_dict(), "config_hash": config_hash(config),
                             "point": {}, "jobs": []}
    records = [{"epoch": e + 1, "lr": 1.0, "train_ppl": t, "valid_ppl": v, "tokens_per_s": 1.0,
                "elapsed_s": 1800.0 * (e + 1), "steps": 10 * (e + 1)} for e, (v, t) in enumerate(zip(valid, train))]
    if test is not None:
        best = min(records, key=lambda r: r["valid_ppl"])
        records.append({"final": True, "test_ppl": test, "best_epoch": best["epoch"], "best_valid_ppl": best["valid_ppl"],
                        "epochs": len(valid), "steps": 30, "elapsed_s": 1800.0 * len(valid), "truncated": False,
                        "device": device, "vocab_size": 10000})
    run = RunDir(sweep.run_dir(key))
    run.create()
    run.write_metrics(records)
    run.write_state(states.COMPLETED if test is not None else states.RUNNING)
    return key


@pytest.fixture
def known_sweep(tmp_path) -> Sweep:
    """LSTM without dropout (2 seeds, GPU), LSTM with dropout 0.3 (1 seed + 1 unfinished), on CPU."""
    sweep = Sweep(tmp_path / "known")
    sweep.path.mkdir()
    manifest = {"version": 1, "name": "known", "runs": {}}
    write_run(sweep, manifest, TrainConfig(seed=1), [150.0, 120.0, 121.0], [140.0, 90.0, 80.0], 115.0, "cuda")
    write_run(sweep, manifest, TrainConfig(seed=2), [160.0, 124.0, 118.0], [150.0, 95.0, 84.0], 113.0, "cuda")
    write_run(sweep, manifest, TrainConfig(seed=1, dropout=0.3), [130.0, 99.0], [160.0, 110.0], 95.0)
    write_run(sweep, manifest, TrainConfig(seed=2, dropout=0.3), [131.0], [161.0], None)
    sweep.write_manifest(manifest)
    return sweep


def test_the_variant_table_has_exact_means_stds_and_the_test_at_the_min_valid_epoch(known_sweep):
    data = analysis.load_sweep(known_sweep)
    table = analysis.results_table(data)
    assert list(table["variant"]) == ["LSTM, dropout 0", "LSTM, dropout 0.3"]
    plain, dropout = table.iloc[0], table.iloc[1]
    assert plain["seeds"] == 2
    assert plain["min_valid_ppl_mean"] == 119.0 and plain["min_valid_ppl_std"] == pytest.approx(math.sqrt(2))
    assert plain["final_train_ppl_mean"] == 82.0 and plain["test_ppl_mean"] == 114.0
    assert plain["min_valid_epoch"] == "2, 3"
    assert plain["target_valid_ppl"] == 125 and plain["target_met"]
    assert plain["gpu_hours"] == pytest.approx(3.0) and plain["cpu_hours"] == 0
    assert plain["parameters"] == 4_653_200 and plain["reference"] == "120.7 / 114.5"
    assert dropout["seeds"] == 1 and math.isnan(dropout["min_valid_ppl_std"])
    assert dropout["min_valid_ppl_mean"] == 99.0 and dropout["target_valid_ppl"] == 100 and dropout["target_met"]
    assert dropout["cpu_hours"] == pytest.approx(1.0) and dropout["reference"] == ""
    assert analysis.incomplete_runs(data) == ["lstm-d0.3-s2"]
    with_incomplete = analysis.results_table(data, include_incomplete=True)
    assert with_incomplete.iloc[1]["seeds"] == 2 and with_incomplete.iloc[1]["min_valid_ppl_mean"] == 115.0


def test_tied_runs_at_rates_of_their_own_are_labelled_tied_and_a_per_cell_lr_is_not(tmp_path):
    """A pilot tries tied + variational weights at rates no untied run shares: grouping by cell and
    dropout alone would label them as plain LSTM runs."""
    sweep = Sweep(tmp_path / "pilot")
    sweep.path.mkdir()
    manifest = {"version": 1, "name": "pilot", "runs": {}}
    tied = dict(tie_weights=True, variational_dropout=True)
    write_run(sweep, manifest, TrainConfig(dropout=0.275), [120.0, 98.0], [110.0, 64.0], 93.0)
    write_run(sweep, manifest, TrainConfig(dropout=0.25, **tied), [118.0, 97.0], [112.0, 75.0], 92.0)
    write_run(sweep, manifest, TrainConfig(dropout=0.35, **tied), [125.0, 102.0], [130.0, 95.0], 97.0)
    write_run(sweep, manifest, TrainConfig(cell="gru", lr=0.5, dropout=0.275), [130.0, 100.0], [120.0, 57.0], 96.0)
    sweep.write_manifest(manifest)
    table = analysis.results_table(analysis.load_sweep(sweep))
    assert list(table["variant"]) == ["LSTM, dropout 0.275", "LSTM, dropout 0.25, variational, tied",
                                      "LSTM, dropout 0.35, variational, tied", "GRU, dropout 0.275"]
    report.make_report(sweep, out=tmp_path / "out", per_run=True)
    runs = (tmp_path / "out" / "results.md").read_text().split("## Runs")[1]
    assert "| key | cell | dropout | variational_dropout | tie_weights | seed |" in runs
    assert "| lstm-d0.275-s1 | lstm | 0.275 | False | False | 1 |" in runs  # the rate in full, not 0.28


def test_a_sweep_whose_runs_are_all_tied_says_so_in_its_labels(tmp_path):
    sweep = Sweep(tmp_path / "beyond")
    sweep.path.mkdir()
    manifest = {"version": 1, "name": "beyond", "runs": {}}
    for seed in (1, 2):
        write_run(sweep, manifest, TrainConfig(dropout=0.45, seed=seed, tie_weights=True, variational_dropout=True),
                  [140.0, 108.0], [150.0, 108.0], 103.0)
    sweep.write_manifest(manifest)
    table = analysis.results_table(analysis.load_sweep(sweep))
    assert list(table["variant"]) == ["LSTM, dropout 0.45, variational, tied"]


def test_recurrent_dropout_is_named_with_its_rate_and_a_manifest_from_before_it_reads_as_none(tmp_path):
    sweep = Sweep(tmp_path / "beyond")
    sweep.path.mkdir()
    manifest = {"version": 1, "name": "beyond", "runs": {}}
    tied = dict(tie_weights=True, variational_dropout=True)
    old_key = write_run(sweep, manifest, TrainConfig(dropout=0.25, **tied), [120.0, 97.0], [112.0, 75.0], 92.0)
    del manifest["runs"][old_key]["config"]["recurrent_dropout"]  # written before the field existed
    write_run(sweep, manifest, TrainConfig(dropout=0.2, recurrent_dropout=0.25, **tied), [118.0, 95.0], [115.0, 80.0], 90.0)
    sweep.write_manifest(manifest)
    table = analysis.results_table(analysis.load_sweep(sweep))
    assert list(table["variant"]) == ["LSTM, dropout 0.25, variational, tied",
                                      "LSTM, dropout 0.2, variational, recurrent dropout 0.25, tied"]


def test_the_run_table_gives_a_small_weight_decay_in_full_and_measurements_to_two_decimals(tmp_path):
    """Two decimals suit perplexities; a weight decay of 3e-05 printed that way reads as none."""
    sweep = Sweep(tmp_path / "decay")
    sweep.path.mkdir()
    manifest = {"version": 1, "name": "decay", "runs": {}}
    write_run(sweep, manifest, TrainConfig(dropout=0.25, seed=1), [120.0, 97.0], [112.0, 75.0], 92.0)
    write_run(sweep, manifest, TrainConfig(dropout=0.25, seed=2, weight_decay=3e-5), [118.0, 95.126], [115.0, 80.0], 90.0)
    sweep.write_manifest(manifest)
    report.make_report(sweep, out=tmp_path / "out", per_run=True)
    runs = (tmp_path / "out" / "results.md").read_text().split("## Runs")[1]
    assert "| weight_decay |" in runs
    assert "| lstm-d0.25-s2 | lstm | 0.25 | 3e-05 | 2 | True | 2 | 80 | 95.13 | 2 | 90 |" in runs
    assert "| lstm-d0.25-s1 | lstm | 0.25 | 0 | 1 | True | 2 | 75 | 97 | 2 | 92 |" in runs


def test_a_mean_at_the_target_does_not_meet_it(known_sweep):
    data = analysis.load_sweep(known_sweep)
    data.targets = type(data.targets)(valid_ppl_no_dropout=119.0, valid_ppl_dropout=100.0)
    assert not analysis.results_table(data).iloc[0]["target_met"]


def test_markdown_and_latex_match_their_golden_files(known_sweep, tmp_path):
    report.make_report(known_sweep, out=tmp_path / "out")
    for name in ("results.md", "results.tex"):
        produced = (tmp_path / "out" / name).read_text()
        assert produced == (GOLDEN / name).read_text(), name


def test_every_output_is_written_and_the_figures_are_real_png_and_svg(known_sweep, tmp_path):
    made = report.make_report(known_sweep, out=tmp_path / "out")
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in made.files)
    assert names == ["figures/lstm-dropout-0-3.png", "figures/lstm-dropout-0-3.svg", "figures/lstm-dropout-0.png",
                     "figures/lstm-dropout-0.svg", "figures/overview.png", "figures/overview.svg",
                     "results.csv", "results.json", "results.md", "results.tex"]
    for path in made.files:
        data = path.read_bytes()
        if path.suffix == ".png":
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
        if path.suffix == ".svg":
            assert b"<svg" in data[:500]
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["incomplete"] == ["lstm-d0.3-s2"] and len(written["variants"]) == 2


def test_a_variant_figure_has_train_and_valid_means_a_band_the_target_and_a_log_axis(known_sweep):
    data = analysis.load_sweep(known_sweep)
    label, runs = figures.variant_groups(data, include_incomplete=False)[0]
    figure = figures.variant_figure(data, runs, label)
    axis = figure.axes[0]
    assert axis.get_yscale() == "log"
    assert axis.get_xlabel() == "epoch" and axis.get_ylabel() == "perplexity (log scale)"
    assert "LSTM, dropout 0" in axis.get_title()
    lines = {line.get_label(): line for line in axis.get_lines()}
    assert list(lines["validation (mean of 2 seeds)"].get_ydata()) == [155.0, 122.0, 119.5]
    assert list(lines["train (mean of 2 seeds)"].get_ydata()) == [145.0, 92.5, 82.0]
    assert list(lines["target: valid < 125"].get_ydata()) == [125, 125]
    bands = [c for c in axis.collections if isinstance(c, matplotlib.collections.PolyCollection)]
    assert len(bands) == 2  # min-max over the seeds, for train and for valid
    matplotlib.pyplot.close(figure)


def labelled_y_ticks(axis) -> list[float]:
    """The y tick labels drawn inside the axis limits, as numbers (the figure must have been drawn)."""
    low, high = axis.get_ylim()
    return [float(tick.get_text()) for tick in axis.get_yticklabels()
            if tick.get_text() and low <= float(tick.get_text()) <= high]


def test_a_long_run_down_to_60_has_labelled_ticks_at_its_low_end_and_a_long_title_fits(tmp_path):
    """A dropout run's curves go from about 300 to 60: its results (near 90) are read at the low end,
    where ticks at 100, 150, ... would leave the axis bare; and a tied, weight-decayed variant of a
    pilot sweep has a title longer than the figure is wide."""
    sweep = Sweep(tmp_path / "pilot-beyond-weight-decay")
    sweep.path.mkdir()
    manifest = {"version": 1, "name": "pilot-beyond-weight-decay", "runs": {}}
    config = TrainConfig(dropout=0.25, tie_weights=True, variational_dropout=True, weight_decay=3e-5)
    write_run(sweep, manifest, config, [183.0, 120.0, 95.0, 88.6], [293.0, 130.0, 80.0, 63.5], 85.4)
    sweep.write_manifest(manifest)
    data = analysis.load_sweep(sweep)
    label, runs = figures.variant_groups(data, include_incomplete=False)[0]
    figure = figures.variant_figure(data, runs, label)
    axis = figure.axes[0]
    figure.canvas.draw()
    labelled = labelled_y_ticks(axis)
    assert [60.0, 70.0, 80.0, 90.0, 100.0] == [value for value in labelled if value <= 100]
    assert 200.0 in labelled and 300.0 in labelled
    title = axis.title.get_window_extent()
    assert axis.get_title() == "LSTM, dropout 0.25, variational, tied, weight decay 3e-05:\npilot-beyond-weight-decay, PTB"
    assert figure.bbox.x0 <= title.x0 and title.x1 <= figure.bbox.x1
    matplotlib.pyplot.close(figure)
    # the overview's valid curve alone spans 183 to 88.6: less than 2.5 times, evenly spaced ticks
    overview = figures.overview_figure(data, figures.variant_groups(data, include_incomplete=False))
    axis = overview.axes[0]
    overview.canvas.draw()
    labelled = labelled_y_ticks(axis)
    assert labelled[:2] == [90.0, 100.0] and len(labelled) >= 5
    assert axis.get_title() == "Validation perplexity of every variant:\npilot-beyond-weight-decay, PTB"
    matplotlib.pyplot.close(overview)


def test_the_overview_has_one_valid_curve_per_variant(known_sweep):
    data = analysis.load_sweep(known_sweep)
    figure = figures.overview_figure(data, figures.variant_groups(data, include_incomplete=False))
    labels = [line.get_label() for line in figure.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert labels == ["LSTM, dropout 0 (n=2)", "LSTM, dropout 0.3 (n=1)"]
    matplotlib.pyplot.close(figure)


def test_the_parameter_count_matches_the_model_it_describes():
    from ptbjobs.train.model import RNNLM, count_parameters

    for config in [TrainConfig(), TrainConfig(cell="gru"), TrainConfig(tie_weights=True),
                   TrainConfig(num_layers=3, emb_size=100, variational_dropout=True)]:
        assert analysis.parameter_count(config.to_dict()) == count_parameters(RNNLM(config, 10_000))


def test_a_sweep_without_a_finished_epoch_gets_a_clear_message(tmp_path, capsys):
    sweep = Sweep(tmp_path / "empty")
    sweep.path.mkdir()
    sweep.write_manifest({"version": 1, "name": "empty", "runs": {"lstm-d0-s1": {
        "config": TrainConfig().to_dict(), "config_hash": "x", "point": {}, "jobs": []}}})
    assert main(["report", "--sweep-dir", str(sweep.path)]) == 1
    assert capsys.readouterr().err.strip() == (f"ptbjobs: error: no run of {sweep.path} has finished an epoch yet "
                                               "(wait for the first epochs (see `ptbjobs status`))")
    assert not (sweep.path / "figures").exists()


def test_a_missing_references_file_is_bad_input(known_sweep, tmp_path, capsys):
    assert main(["report", "--sweep-dir", str(known_sweep.path), "--out", str(tmp_path / "o"),
                 "--references-file", str(tmp_path / "none.csv")]) == 2
    assert capsys.readouterr().err.strip() == (f"ptbjobs: error: --references-file: no file at {tmp_path / 'none.csv'} "
                                               "(give the path of a CSV of references)")
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_report_with_references_shows_the_published_rows(known_sweep, tmp_path, capsys):
    assert main(["report", "--sweep-dir", str(known_sweep.path), "--out", str(tmp_path / "o"), "--references"]) == 0
    text = (tmp_path / "o" / "results.md").read_text()
    assert "Press & Wolf (2017)" in text and "| 89.9 | 85.1 |" in text


def test_with_incomplete_runs_included_the_table_says_how_many_finished(known_sweep, tmp_path):
    made = report.make_report(known_sweep, out=tmp_path / "o", include_incomplete=True)
    text = (tmp_path / "o" / "results.md").read_text()
    assert "| LSTM, dropout 0.3 | 2 (1 finished) |" in text
    assert "Incomplete runs, counted in the table (--include-incomplete): lstm-d0.3-s2." in text
    assert made.table.iloc[1]["test_ppl_mean"] == 95.0  # the one run that has a test perplexity


def test_a_run_with_a_damaged_metrics_file_is_left_out_of_the_report_and_named(known_sweep, tmp_path, capsys):
    runs = list(known_sweep.read_manifest()["runs"])
    metrics = known_sweep.run_dir(runs[0]) / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-30])
    made = report.make_report(known_sweep, out=tmp_path / "out")
    assert list(made.damaged) == [runs[0]] and "is cut short" in made.damaged[runs[0]]
    assert runs[0] not in set(made.per_run["key"])
    assert f"{runs[0]} ({metrics} is cut short" in (tmp_path / "out" / "results.md").read_text()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["damaged"] == made.damaged
    assert main(["report", "--sweep-dir", str(known_sweep.path), "--out", str(tmp_path / "cli")]) == 0
    assert f"damaged run, left out: {runs[0]}: {metrics} is cut short" in capsys.readouterr().out
