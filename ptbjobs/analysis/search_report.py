"""What a search found and what it cost: per group, the best configuration and its numbers; the
compute its runs used against what the whole grid, every run trained to its last epoch, would have
used; and a figure per group with every run's validation curve, the paused runs faint, the rungs
marked. Part of `ptbjobs report` for a sweep whose grid has a [search] with rungs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from ptbjobs.analysis.figures import finish_axes
from ptbjobs.analysis.tables import SweepData
from ptbjobs.sweep.arrivals import rung_summary
from ptbjobs.sweep.folder import Sweep
from ptbjobs.sweep.search import group_of


@dataclass
class SearchResult:
    rungs: list[int]
    best: pd.DataFrame  # a row per group: group, key, complete, min_valid_ppl, min_valid_epoch, test_ppl, settings
    used_hours: float  # every run's training time as it ran (paused runs to their pause)
    full_hours: float  # the same runs, each trained to its last epoch (its time per epoch so far)
    device: str  # "GPU" or "CPU": which hours these are
    reached: list[dict[str, Any]]  # per rung: epoch, reached, went_on
    groups: dict[str, str]  # run key -> its group

    @property
    def ratio(self) -> float:
        return self.used_hours / self.full_hours if self.full_hours > 0 else math.nan


def search_result(sweep: Sweep, data: SweepData) -> SearchResult | None:
    """None for a sweep that is no search with rungs."""
    manifest = sweep.read_manifest()
    search = manifest.get("search")
    if not search:
        return None
    group_by = search.get("group_by", [])
    groups = {key: group_of(entry.get("point", {}), [a for a in group_by if a in entry.get("point", {})]) or "all runs"
              for key, entry in manifest["runs"].items()}
    runs = data.runs.copy()
    runs["group"] = runs["key"].map(groups)
    on_gpu = runs["gpu_hours"].sum() > runs["cpu_hours"].sum()
    hours = runs["gpu_hours"] + runs["cpu_hours"]
    # a run's hours per epoch so far, times its epochs; one that never trained costs its group's mean
    per_epoch = (hours / runs["epochs_done"].where(runs["epochs_done"] > 0)).fillna(
        (hours.sum() / runs["epochs_done"].sum()) if runs["epochs_done"].sum() else 0.0)
    full = float((per_epoch * runs["epochs"]).sum())
    settings = [column for column in _varying(runs) if column not in group_by]
    best_rows = []
    for group, members in runs.groupby("group", sort=False):
        ranked = members.sort_values(["complete", "min_valid_ppl"], ascending=[False, True])
        top = ranked.iloc[0]
        best_rows.append({"group": group, "key": top["key"], "complete": bool(top["complete"]),
                          "min_valid_ppl": top["min_valid_ppl"], "min_valid_epoch": top["min_valid_epoch"],
                          "test_ppl": top["test_ppl"], "settings": {c: _plain(top[c]) for c in settings}})
    return SearchResult(rungs=list(search["rungs"]), best=pd.DataFrame(best_rows), used_hours=float(hours.sum()),
                        full_hours=full, device="GPU" if on_gpu else "CPU",
                        reached=rung_summary(sweep.path, search["keep"])["rungs"], groups=groups)


def _varying(runs: pd.DataFrame) -> list[str]:
    """The config fields whose values differ between the runs: what the search tried."""
    skip = {"key", "group", "complete", "epochs_done", "final_train_ppl", "min_valid_ppl", "min_valid_epoch",
            "test_ppl", "gpu_hours", "cpu_hours", "parameters", "paused"}
    return [c for c in runs.columns if c not in skip and runs[c].astype(str).nunique() > 1]


def _plain(value: Any) -> Any:
    return getattr(value, "item", lambda: value)()


def markdown(result: SearchResult) -> str:
    lines = ["## Search", "",
             f"Rungs at epochs {', '.join(map(str, result.rungs))}: "
             + "; ".join(f"epoch {r['epoch']}: {r['reached']} reached, {r['went_on']} went on" for r in result.reached)
             + ".", "",
             f"Compute: {result.used_hours:.3g} {result.device}-hours used, against {result.full_hours:.3g} for "
             f"every run of the grid trained to its last epoch ({100 * result.ratio:.0f}%).", "",
             "| group | best run | settings | best valid (epoch) | test | finished |",
             "|---|---|---|---:|---:|---|"]
    for _, row in result.best.iterrows():
        settings = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in row["settings"].items())
        test = "-" if math.isnan(row["test_ppl"]) else f"{row['test_ppl']:.2f}"
        lines.append(f"| {row['group']} | {row['key']} | {settings} | {row['min_valid_ppl']:.2f} "
                     f"({int(row['min_valid_epoch'])}) | {test} | {'yes' if row['complete'] else 'no'} |")
    return "\n".join(lines) + "\n"


def search_figure(data: SweepData, result: SearchResult, group: str) -> Figure:
    """Every run of the group: its validation perplexity by epoch; the runs that finished drawn
    plainly, the best in bold, those paused faint; the rungs as vertical lines."""
    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    keys = [key for key, g in result.groups.items() if g == group]
    runs = data.runs.set_index("key")
    best = result.best.set_index("group").loc[group, "key"]
    drawn = set()
    for key in keys:
        curve = data.epochs[data.epochs["key"] == key]
        if curve.empty or key not in runs.index:
            continue
        if key == best:
            axis.plot(curve["epoch"], curve["valid_ppl"], color="C3", linewidth=2.2, label=f"best: {key}", zorder=3)
        elif runs.loc[key, "complete"]:
            axis.plot(curve["epoch"], curve["valid_ppl"], color="C0", linewidth=1.0, alpha=0.8)
            drawn.add("finished")
        else:  # a run paused at the first rung is a single point: its end is marked
            axis.plot(curve["epoch"], curve["valid_ppl"], color="0.5", linewidth=0.8, alpha=0.45)
            axis.plot(curve["epoch"].iloc[-1:], curve["valid_ppl"].iloc[-1:], "x", color="0.4", markersize=4)
            drawn.add("paused")
    finite = data.epochs[data.epochs["key"].isin(keys)]["valid_ppl"]
    finite = finite[finite < 1e6]
    if not finite.empty:  # a hopeless run's curve (1e100) would squash the others flat
        top = min(finite.max(), finite.min() * 4) * 1.05
        axis.set_ylim(finite.min() * 0.95, top)
        above = sum(1 for key in keys if key in runs.index and runs.loc[key, "min_valid_ppl"] > top)
        if above:
            axis.plot([], [], " ", label=f"{above} run(s) above the scale (paused)")
    for rung in result.rungs:
        axis.axvline(rung, color="0.3", linestyle=":", linewidth=0.8)
    if "finished" in drawn:
        axis.plot([], [], color="C0", label="finished")
    if "paused" in drawn:
        axis.plot([], [], "x-", color="0.5", markersize=4, label="paused at a rung (x: where)")
    axis.plot([], [], color="0.3", linestyle=":", label="rungs")
    return finish_axes(figure, axis, "validation perplexity", f"{data.name}: search, {group}")
