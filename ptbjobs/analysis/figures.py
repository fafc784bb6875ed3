"""Convergence figures: per variant, train and valid perplexity against epoch (mean over seeds,
min-max band, the target dashed), and one overview of every variant's valid curve."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none assumed

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ptbjobs.analysis.tables import SweepData, target_for, variant_label  # noqa: E402

DPI = 150
TITLE_WIDTH = 66  # characters that fit on one line of the title; a longer one (a long variant and sweep name) wraps


def _log_axis(axis) -> None:
    """Log scale with plain numbers on the ticks (80, 100, 200, not 8 x 10^1) and whole epochs.
    Over more than a decade: ticks at 1, 2 and 5 times powers of ten. Over a factor of 2.5 to 10
    (a dropout run from 300 down to 60, say): 60, 70, 80, 90, 100, 150, 200, 250, 300, since
    evenly spaced ones (100, 150, ...) would leave the low end bare, where the results are read.
    Over a narrower range (all curves between 110 and 190): evenly spaced round numbers."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_yscale("log")
    low, high = axis.get_ylim()
    if high / low > 10:
        axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    elif high / low > 2.5:
        axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)))
    else:
        # steps of 10 or 20, up to 12: 90, 100, ... 190 for curves from 88 to 183, so the low end,
        # where the results are read, has its label
        ticks = MaxNLocator(nbins=12, steps=[1, 2, 5, 10]).tick_values(low, high)
        axis.yaxis.set_major_locator(FixedLocator(ticks))
    axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.yaxis.set_minor_formatter(NullFormatter())
    axis.set_ylim(low, high)


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _curves(epochs: pd.DataFrame, column: str) -> pd.DataFrame:
    """mean, min and max over seeds of `column` at each epoch."""
    return epochs.groupby("epoch")[column].agg(["mean", "min", "max", "count"]).reset_index()


def variant_figure(data: SweepData, runs: pd.DataFrame, label: str) -> Figure:
    """Train and valid perplexity of one variant's runs, as in the seed report (both on one axis)."""
    epochs = data.epochs[data.epochs["key"].isin(runs["key"])]
    first = runs.iloc[0]
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    for column, name, color in (("train_ppl", "train", "tab:blue"), ("valid_ppl", "validation", "tab:orange")):
        curve = _curves(epochs, column)
        axis.plot(curve["epoch"], curve["mean"], color=color, marker="o", markersize=3,
                  label=f"{name} (mean of {len(runs)} seeds)" if len(runs) > 1 else f"{name} (1 seed)")
        if len(runs) > 1:
            axis.fill_between(curve["epoch"], curve["min"], curve["max"], color=color, alpha=0.2,
                              label=f"{name}: min-max over seeds")
    target = target_for(first["dropout"], data.targets)
    axis.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target: valid < {target:g}")
    return finish_axes(figure, axis, "perplexity (log scale)", f"{label}: {data.name}, PTB")


def overview_figure(data: SweepData, groups: list[tuple[str, pd.DataFrame]]) -> Figure:
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    for label, runs in groups:
        curve = _curves(data.epochs[data.epochs["key"].isin(runs["key"])], "valid_ppl")
        axis.plot(curve["epoch"], curve["mean"], marker="o", markersize=3, label=f"{label} (n={len(runs)})")
    for target in sorted({target_for(runs.iloc[0]["dropout"], data.targets) for _, runs in groups}):
        axis.axhline(target, color="gray", linestyle="--", linewidth=1)
        axis.annotate(f"target {target:g}", (axis.get_xlim()[0], target), fontsize=7, color="gray",
                      xytext=(3, 3), textcoords="offset points")
    return finish_axes(figure, axis, "validation perplexity (log scale)",
                   f"Validation perplexity of every variant: {data.name}, PTB")


def _wrapped(title: str) -> str:
    """The title on one line if it fits, else broken after its last colon (what is drawn, then the
    sweep), else between words; never inside a sweep name such as pilot-beyond-weight-decay."""
    if len(title) <= TITLE_WIDTH:
        return title
    head, colon, tail = title.rpartition(": ")
    if colon and len(head) < TITLE_WIDTH and len(tail) <= TITLE_WIDTH:
        return f"{head}:\n{tail}"
    return textwrap.fill(title, TITLE_WIDTH, break_on_hyphens=False)


def finish_axes(figure: Figure, axis, ylabel: str, title: str) -> Figure:
    _log_axis(axis)
    axis.set_xlabel("epoch")
    axis.set_ylabel(ylabel)
    axis.set_title(_wrapped(title))
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def variant_groups(data: SweepData, include_incomplete: bool) -> list[tuple[str, pd.DataFrame]]:
    runs = data.runs if include_incomplete else data.runs[data.runs["complete"]]
    runs = runs[runs["epochs_done"] > 0]
    return [(variant_label(group.iloc[0], data.variant_fields), group)
            for _, group in runs.groupby(data.variant_fields, sort=False, dropna=False)]


def save(figure: Figure, folder: Path, name: str, write) -> list[Path]:
    """PNG and SVG of `figure`, each written through `write(path, bytes)` (atomically)."""
    import io

    paths = []
    for fmt in ("png", "svg"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=DPI)
        path = folder / f"{name}.{fmt}"
        write(path, buffer.getvalue())
        paths.append(path)
    plt.close(figure)
    return paths
