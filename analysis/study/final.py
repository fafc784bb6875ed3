"""The study's answer: for each variant, the config that meets its goal, over its three seeds, from
wherever those seeds ran, as one table and one figure.

`ptbjobs report` reads one sweep folder. The study's answer spans several: the no-dropout variants
are round 1's runs on a GPU (kept in run-folders.tar.gz), the dropout variants with weight decay
ran on CPU (their metrics files in ../pilots/, some from machines whose run folders are gone). So
this reads the runs' own metrics files, named below, and computes the same figures the report does:
each run's best validation perplexity and its test perplexity at that epoch, their mean and sample
standard deviation over seeds, and the valid curve's mean with the seeds' min-max band.

    python analysis/study/final.py [OUT]        # default OUT: analysis/study/final

It writes OUT/results.md (the table), OUT/runs.csv (each run's figures, where it ran and its
metrics file) and OUT/valid-per-epoch.png and .svg.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from ptbjobs.core.atomic import atomic_write_bytes  # noqa: E402
from ptbjobs.analysis.figures import _log_axis, save  # noqa: E402  (the report's axis and writer: figures alike)

HERE = Path(__file__).resolve().parent
ARCHIVE = HERE / "run-folders.tar.gz"
PILOTS = HERE.parent / "pilots"
GPU = "one H200, 2026-11-27 (round 1, 24 runs at once)"
EPYC_DEC4 = "2-core AMD EPYC CPU, 2026-12-04"
EPYC_DEC5 = "2-core AMD EPYC CPU, 2026-12-05"
XEON = "2-core Intel Xeon CPU, 2026-11-28"
# (where and when each seed ran; ../pilots/README.md has each CPU run's commit, hours and speed,
# README.md here round 1's)


@dataclass(frozen=True)
class Seed:
    seed: int
    metrics: str  # "archive:<member>" (inside run-folders.tar.gz) or a file name in ../pilots/
    machine: str


@dataclass(frozen=True)
class Variant:
    label: str
    config: str
    required: float | None  # the study's limit (valid <), None for "beyond"
    goal: float  # our own goal (valid <=)
    seeds: tuple[Seed, ...]
    with_dropout: bool = True  # the figure's panel: the two schedules differ (13 and 32 epochs)


def _round1(run: str) -> tuple[Seed, ...]:
    return tuple(Seed(s, f"archive:runs/zaremba-small/{run}-s{s}/metrics.jsonl", GPU) for s in (1, 2, 3))


def _pilot(stem: str, machines: tuple[str, str, str]) -> tuple[Seed, ...]:
    # seed 1 of each CPU config is the pilot run that chose it; seeds 2 and 3 ran later, as "-s2", "-s3"
    names = (f"{stem}-metrics.jsonl", f"{stem}-s2-metrics.jsonl", f"{stem}-s3-metrics.jsonl")
    return tuple(Seed(s, name, machine) for s, name, machine in zip((1, 2, 3), names, machines))


# Each variant's config as in launch/zaremba-small.toml and launch/beyond.toml (2 x 200, bptt 20,
# batch 20, every run's own seed); the dropout ones are round 2's weight-decay points.
VARIANTS = (
    Variant("LSTM, no dropout", "lr 1, halved each epoch from epoch 5; 13 epochs", 125, 119.5,
            _round1("lstm-d0"), with_dropout=False),
    Variant("GRU, no dropout", "lr 0.5, halved each epoch from epoch 3; 13 epochs", 125, 120,
            _round1("gru-d0"), with_dropout=False),
    Variant("LSTM, dropout", "dropout 0.275, weight decay 3e-5; lr 1 held 10 epochs, then /1.2; 32 epochs",
            100, 96, _pilot("cpu-lstm-d0.275-wd3e-5", (EPYC_DEC5,) * 3)),
    Variant("GRU, dropout", "dropout 0.35, weight decay 2e-5; lr 0.5 held 10 epochs, then /1.2; 32 epochs",
            100, 99, _pilot("cpu-gru-d0.35-wd2e-5", (XEON, EPYC_DEC5, EPYC_DEC5))),
    Variant("beyond: LSTM, tied + variational dropout",
            "variational dropout 0.25, tied, weight decay 3e-5; lr 1 held 10 epochs, then /1.2; 32 epochs",
            None, 90, _pilot("cpu-tied-var0.25-wd3e-5", (EPYC_DEC4, EPYC_DEC5, EPYC_DEC5))),
)


def read_metrics(source: str, archive: tarfile.TarFile) -> tuple[dict[int, dict], dict]:
    """(epoch records by epoch, the final record) of one run. A run without its final record, or
    cut short by max_steps ("truncated"), is an error: the report would not count it either."""
    try:
        if source.startswith("archive:"):
            text = archive.extractfile(source.removeprefix("archive:")).read().decode()
        else:
            text = (PILOTS / source).read_text()
    except (KeyError, FileNotFoundError):
        raise SystemExit(f"{source}: no such metrics file; each variant's seeds are listed in VARIANTS") from None
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    epochs = {r["epoch"]: r for r in records if "valid_ppl" in r and "epoch" in r}
    final = next((r for r in records if r.get("final")), None)
    if final is None or final.get("truncated"):
        raise SystemExit(f"{source}: the run did not finish all its epochs; the answer needs finished runs")
    return epochs, final


def _pm(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def results(runs: dict[str, list[tuple[Seed, dict[int, dict], dict]]]) -> str:
    lines = ["# The study's answer: each variant's config that meets its goal, three seeds each", "",
             "Validation perplexity is each run's best epoch; test perplexity is measured once, with the "
             "weights of that epoch. Mean ± sample std over the seeds. Run time: each run's own training "
             "and evaluation time, added up over the seeds (runs that shared a device each count their "
             "own, as in `ptbjobs report`). Written by `python analysis/study/final.py` from the runs' "
             "own metrics files.", "",
             "| variant | config | valid | test | required | our goal | seeds: valid | where it ran | run time |",
             "|---|---|---:|---:|---|---|---|---|---:|"]
    for variant in VARIANTS:
        seeds = runs[variant.label]
        valid = [final["best_valid_ppl"] for _, _, final in seeds]
        test = [final["test_ppl"] for _, _, final in seeds]
        mean = statistics.mean(valid)
        required = "-" if variant.required is None else (
            f"< {variant.required:g}: {'met' if mean < variant.required else 'missed'}")
        margin = variant.goal - mean
        goal = f"<= {variant.goal:g}: " + (f"met by {margin:.2f}" if margin >= 0 else f"**missed by {-margin:.2f}**")
        per_seed = ", ".join(f"{v:.2f}" for v in valid)
        machines = "; ".join(f"seed{'s' if len(group) > 1 else ''} {', '.join(group)}: {machine}"
                             for machine, group in _grouped(seeds))
        lines.append(f"| {variant.label} | {variant.config} | {_pm(valid)} | {_pm(test)} | {required} | {goal} "
                     f"| {per_seed} | {machines} | {_run_time(seeds)} |")
    return "\n".join(lines) + "\n"


def _run_time(seeds: list[tuple[Seed, dict[int, dict], dict]]) -> str:
    hours = sum(final["elapsed_s"] for _, _, final in seeds) / 3600
    devices = {"GPU" if final["device"].startswith("cuda") else "CPU" for _, _, final in seeds}
    return f"{hours:.2f} {'/'.join(sorted(devices))}-h"


def _grouped(seeds: list[tuple[Seed, dict[int, dict], dict]]) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = {}
    for seed, _, _ in seeds:
        groups.setdefault(seed.machine, []).append(str(seed.seed))
    return list(groups.items())


def runs_csv(runs: dict[str, list[tuple[Seed, dict[int, dict], dict]]]) -> str:
    """One row per run: what the table's means are made of."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", "config", "seed", "best_valid_ppl", "best_epoch", "test_ppl", "epochs",
                     "device", "run_hours", "where", "metrics"])
    for variant in VARIANTS:
        for seed, _, final in runs[variant.label]:
            writer.writerow([variant.label, variant.config, seed.seed, f"{final['best_valid_ppl']:.4f}",
                             final["best_epoch"], f"{final['test_ppl']:.4f}", final["epochs"], final["device"],
                             f"{final['elapsed_s'] / 3600:.4f}", seed.machine, _repo_path(seed.metrics)])
    return buffer.getvalue()


def _repo_path(source: str) -> str:
    """Where a metrics file is, from the repository's root."""
    if source.startswith("archive:"):
        return f"analysis/study/{ARCHIVE.name}: {source.removeprefix('archive:')}"
    return f"analysis/pilots/{source}"


def figure(runs: dict[str, list[tuple[Seed, dict[int, dict], dict]]]):
    """Two panels, as the schedules differ: the 13-epoch no-dropout runs, and the 32-epoch dropout
    ones. Each variant: mean valid curve over its seeds, their min-max band, its goal dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    panels = ((axes[0], [v for v in VARIANTS if not v.with_dropout], "without dropout"),
              (axes[1], [v for v in VARIANTS if v.with_dropout], "with dropout and weight decay"))
    for axis, variants, title in panels:
        for variant in variants:
            curves = [epochs for _, epochs, _ in runs[variant.label]]
            shared = sorted(set.intersection(*(set(curve) for curve in curves)))  # epochs every seed has
            columns = [[curve[epoch]["valid_ppl"] for curve in curves] for epoch in shared]
            (line,) = axis.plot(shared, [statistics.mean(v) for v in columns], marker="o", markersize=3,
                                label=f"{variant.label} (mean of {len(curves)} seeds)")
            color = line.get_color()
            axis.fill_between(shared, [min(v) for v in columns], [max(v) for v in columns], color=color, alpha=0.2)
            axis.axhline(variant.goal, color=color, linestyle="--", linewidth=1, label=f"goal <= {variant.goal:g}")
        _log_axis(axis)
        axis.set_xlabel("epoch")
        axis.set_ylabel("validation perplexity (log scale)")
        axis.set_title(f"Zaremba-small on PTB, {title}")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else HERE / "final"
    with tarfile.open(ARCHIVE) as archive:
        runs = {v.label: [(seed, *read_metrics(seed.metrics, archive)) for seed in v.seeds] for v in VARIANTS}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.md", results(runs).encode())
    atomic_write_bytes(out / "runs.csv", runs_csv(runs).encode())
    save(figure(runs), out, "valid-per-epoch", atomic_write_bytes)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
