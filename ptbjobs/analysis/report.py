"""`ptbjobs report`: the results table (terminal, Markdown, CSV, LaTeX, JSON) and the convergence
figures of a sweep, written into its folder (or --out), each file replaced atomically."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ptbjobs.analysis import figures
from ptbjobs.analysis import tables as analysis
from ptbjobs.analysis.search_report import SearchResult, search_figure, search_result
from ptbjobs.analysis.search_report import markdown as search_markdown
from ptbjobs.core.atomic import atomic_write_bytes
from ptbjobs.core.errors import ConfigError, PtbjobsError
from ptbjobs.sweep.folder import Sweep

PARAMETER_NOTE = ("parameters as PyTorch counts them: two bias vectors per gate in each recurrent layer "
                  "(an LSTM layer of 200 on 200 inputs: 321,600; a single-bias count gives 320,800)")


@dataclass
class Report:
    table: pd.DataFrame
    per_run: pd.DataFrame
    incomplete: list[str]
    damaged: dict[str, str]  # runs left out because a file of theirs cannot be read: key -> what
    references: pd.DataFrame | None
    files: list[Path] = field(default_factory=list)
    diverged: dict[str, int] = field(default_factory=dict)  # runs whose loss became NaN or infinite: key -> epoch
    search: SearchResult | None = None  # what a search found and cost (search.md), for a grid with [search] rungs


def make_report(sweep: Sweep, out: Path | None = None, include_incomplete: bool = False,
                per_run: bool = False, references: Path | str | bool | None = None) -> Report:
    """references: True for the published ones shipped with ptbjobs, or the path of a CSV of one's own."""
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(None, f"--out {out} is a file, not a folder", "give a folder path")
    refs = None
    if references is True:
        refs = analysis.published_references()
    elif references:
        refs = analysis.load_references(references)
    data = analysis.load_sweep(sweep)
    table = analysis.results_table(data, include_incomplete)
    if table.empty:
        diverged = f" ({len(data.diverged)} diverged)" if data.diverged else ""
        raise PtbjobsError(f"no run of {sweep.path} has completed yet{diverged}",
                           "wait for a run to finish, or add --include-incomplete")
    report = Report(table, data.runs, analysis.incomplete_runs(data), data.damaged, refs, diverged=data.diverged)
    folder = out or sweep.path
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    write = _writer(report.files)
    write(folder / "results.md", markdown(report, data, per_run, include_incomplete).encode())
    write(folder / "results.csv", table.to_csv(index=False).encode())
    write(folder / "results.tex", latex(report).encode())
    document = json.dumps({
        "sweep": data.name, "variants": analysis.to_json_records(table), "runs": _RUNS_PLACE,
        "incomplete": report.incomplete, "damaged": report.damaged, "diverged": report.diverged,
        "references": analysis.to_json_records(refs) if refs is not None else None,
        "parameter_count": PARAMETER_NOTE}, indent=1)
    # the runs as pandas writes them (NaN as null), a line each: re-encoding 100,000 of them through
    # Python objects took a quarter of a minute
    runs = ",\n  ".join(data.runs[_RUN_COLUMNS].to_json(orient="records", lines=True).splitlines())
    write(folder / "results.json", (document.replace(json.dumps(_RUNS_PLACE), f"[\n  {runs}\n ]", 1) + "\n").encode())
    groups = figures.variant_groups(data, include_incomplete)
    for label, runs in groups:
        figures.save(figures.variant_figure(data, runs, label), folder / "figures", figures.slug(label), write)
    figures.save(figures.overview_figure(data, groups), folder / "figures", "overview", write)
    report.search = search_result(sweep, data)
    if report.search is not None:
        write(folder / "search.md", search_markdown(report.search).encode())
        for group in report.search.best["group"]:
            figure = search_figure(data, report.search, group)
            figures.save(figure, folder / "figures", "search-" + figures.slug(group), write)
    return report


def _writer(log: list[Path]):
    def write(path: Path, payload: bytes) -> None:
        atomic_write_bytes(path, payload)
        log.append(path)
    return write


_RUN_COLUMNS = ["key", "cell", "dropout", "seed", "complete", "epochs_done", "final_train_ppl", "min_valid_ppl",
                "min_valid_epoch", "test_ppl", "gpu_hours", "cpu_hours"]
_RUNS_PLACE = "<the runs, written by pandas>"
_MEASURED_COLUMNS = {"final_train_ppl", "min_valid_ppl", "test_ppl", "gpu_hours", "cpu_hours"}


def _pm(mean: float, std: float, digits: int = 1) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _compute(row: pd.Series) -> str:
    parts = [f"{row['gpu_hours']:.2f} GPU-h"] if row["gpu_hours"] > 0 else []
    if row["cpu_hours"] > 0 or not parts:
        parts.append(f"{row['cpu_hours']:.2f} CPU-h")
    return " + ".join(parts)


def diverged_list(report: Report) -> str:
    """The diverged runs as the report names them: "lstm-d0-s3 diverged (epoch 4), ..."."""
    return ", ".join(f"{key} diverged (epoch {epoch})" for key, epoch in report.diverged.items())


def _seeds(row: pd.Series) -> str:
    """The seeds of a variant; with --include-incomplete, how many finished and which diverged (and when)."""
    if row["finished"] == row["seeds"]:
        return str(row["seeds"])
    notes = [f"{row['finished']} finished"]
    if row["diverged_epochs"]:
        epochs = row["diverged_epochs"].split(", ")
        notes.append(f"{len(epochs)} diverged at epoch{'s' if len(epochs) > 1 else ''} {row['diverged_epochs']}")
    return f"{row['seeds']} ({', '.join(notes)})"


def display_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The variant table as text cells, shared by the terminal, Markdown and LaTeX renderings."""
    header = ["variant", "seeds", "final train ppl", "min valid ppl", "test ppl", "epoch of min",
              "target (valid)", "met", "compute", "parameters"]
    rows = []
    for _, row in report.table.iterrows():
        # with --include-incomplete, unfinished runs count in train/valid but have no test yet
        rows.append([row["variant"], _seeds(row), _pm(row["final_train_ppl_mean"], row["final_train_ppl_std"]),
                     _pm(row["min_valid_ppl_mean"], row["min_valid_ppl_std"]),
                     _pm(row["test_ppl_mean"], row["test_ppl_std"]), row["min_valid_epoch"],
                     f"< {row['target_valid_ppl']:g}", "yes" if row["target_met"] else "no", _compute(row),
                     f"{row['parameters']:,}"])
        if row["reference"]:  # the published number for this very model, on the row below it
            reference = analysis.ZAREMBA_SMALL
            rows.append([f"{reference['source']} (published)", "-", "-", f"{reference['valid_ppl']}",
                         f"{reference['test_ppl']}", "-", "-", "-", "-", "-"])
    return header, rows


def markdown(report: Report, data: analysis.SweepData, per_run: bool, include_incomplete: bool = False) -> str:
    header, rows = display_rows(report)
    lines = [f"# Results: sweep {data.name}", "",
             "Mean ± std over seeds (sample std). Test perplexity is each run's, measured once with the weights "
             "of its best validation epoch. Target met when the mean min valid perplexity is below the target. "
             "Compute: the seeds' training and evaluation time on their device, added up (runs that shared "
             "one GPU each count their own time).", "",
             _md_table(header, rows), "", f"Parameter count: {PARAMETER_NOTE}."]
    if report.incomplete:
        counted = "counted in the table (--include-incomplete)" if include_incomplete else "not in the table"
        lines += ["", f"Incomplete runs, {counted}: {', '.join(report.incomplete)}."]
    if report.diverged:
        counted = ("their epochs before it counted in the table (--include-incomplete)" if include_incomplete
                   else "not in the table")
        lines += ["", f"Diverged runs (the loss became NaN or infinite), {counted}: {diverged_list(report)}."]
    if report.damaged:
        lines += ["", "Runs left out because a file of theirs cannot be read (`ptbjobs status` says what to do): "
                  + "; ".join(f"{key} ({problem})" for key, problem in report.damaged.items()) + "."]
    if report.references is not None:
        lines += ["", "## Published results (2 x 200 models on PTB)", "",
                  _md_table(list(report.references.columns), report.references.astype(str).values.tolist())]
    if per_run:
        # what sets the variants apart beyond cell and dropout (tied weights, a schedule) after dropout
        columns = _RUN_COLUMNS[:3] + [f for f in data.variant_fields[2:] if f in report.per_run] + _RUN_COLUMNS[3:]
        runs = report.per_run[columns]
        lines += ["", "## Runs", "", _md_table(columns, [[_run_cell(report, r[0], name, v) for name, v in zip(columns, r)]
                                                         for r in runs.values.tolist()])]
    return "\n".join(lines) + "\n"


def _run_cell(report: Report, key: str, column: str, value) -> str:
    """A cell of the per-run table: a diverged run's "complete" says so, with the epoch."""
    if column == "complete" and key in report.diverged:
        return f"diverged (epoch {report.diverged[key]})"
    return _cell(value, column)


def _cell(value, column: str = "") -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        # measurements to two decimals; a setting in full (dropout 0.275, not 0.28; weight decay 3e-05, not 0.00)
        return f"{value:.2f}" if column in _MEASURED_COLUMNS and not value.is_integer() else f"{value:g}"
    return str(value)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def latex(report: Report) -> str:
    header, rows = display_rows(report)
    escape = lambda text: (text.replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%")
                           .replace("_", "\\_").replace("#", "\\#").replace("±", "$\\pm$").replace("<", "$<$"))
    lines = ["\\begin{tabular}{l" + "r" * (len(header) - 1) + "}", "\\toprule",
             " & ".join(escape(h) for h in header) + " \\\\", "\\midrule"]
    lines += [" & ".join(escape(c) for c in row) + " \\\\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "% needs \\usepackage{booktabs}\n" + "\n".join(lines) + "\n"


def terminal_table(report: Report):
    from rich.table import Table

    header, rows = display_rows(report)
    table = Table(title="results", title_justify="left")
    for name in header:
        table.add_column(name, justify="left" if name == "variant" else "right")
    for row in rows:
        table.add_row(*row)
    return table
