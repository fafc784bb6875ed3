"""A search's rungs as files of the sweep folder: who reached each rung, with what metric, in the
order they reached it. Written by each run's judge under the sweep's lock (executors/rungs.py),
read by status and report.

    <sweep>/search/rung-<epoch>.jsonl   a line per run that reached the rung: its key, group,
                                        metric, and the config it ran; and a line per group for
                                        which the rung closed (below)

A plain file of JSON lines, appended: a line cut by a crash is skipped, and the others stand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptbjobs.core.atomic import read_records
from ptbjobs.sweep.search import promotions

SEARCH_DIR = "search"


def rung_path(sweep_dir: Path, epoch: int) -> Path:
    return Path(sweep_dir) / SEARCH_DIR / f"rung-{epoch}.jsonl"


@dataclass
class Rung:
    """What the file of one rung holds."""

    arrivals: list[dict[str, Any]]  # in order of arrival: run, group, metric, config
    # group -> the run that went on when the rung closed with none going on by the rule: every run
    # of the group that could reach the rung had reached it (a small group, or a small keep)
    closed: dict[str, str] = field(default_factory=dict)

    def group(self, group: str) -> list[tuple[str, float]]:
        return [(a["run"], a["metric"]) for a in self.arrivals if a["group"] == group]

    def went_on(self, group: str, keep: float) -> list[str]:
        """The runs of the group that go on from this rung, in the order they were promoted."""
        return list(self.promotions(group, keep))

    def promotions(self, group: str, keep: float) -> dict[str, int]:
        """search.promotions of the group's arrivals, with the run that went on as the rung closed
        (promoted by the last arrival)."""
        arrivals = self.group(group)
        promoted = promotions(arrivals, keep)
        last = self.closed.get(group)
        if last is not None:
            promoted.setdefault(last, len(arrivals) - 1)
        return promoted

    def paused_then_promoted(self, keep: float) -> set[str]:
        """The runs, of every group, that were paused here as they arrived and promoted later."""
        later = set()
        for group in {a["group"] for a in self.arrivals}:
            order = {run: index for index, (run, _) in enumerate(self.group(group))}
            later |= {run for run, by in self.promotions(group, keep).items() if by > order[run]}
        return later


def read_rung(sweep_dir: Path, epoch: int) -> Rung:
    """The rung's file: its runs in order of arrival, one each (a run restarted afresh with another
    config arrives anew, in its new place), and how it closed. A damaged line is skipped."""
    records, _ = read_records(rung_path(sweep_dir, epoch))
    latest: dict[str, dict[str, Any]] = {}
    closed: dict[str, str] = {}
    for record in records:
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("closed"), str) and isinstance(record.get("promoted"), str):
            closed.setdefault(record["closed"], record["promoted"])
            continue
        if not (isinstance(record.get("run"), str) and isinstance(record.get("metric"), (int, float))
                and isinstance(record.get("group"), str)):
            continue
        first = latest.get(record["run"])
        if first is None or first.get("config") != record.get("config"):
            latest.pop(record["run"], None)  # re-inserted: its place is now the end
            latest[record["run"]] = record
    return Rung(list(latest.values()), closed)


def read_arrivals(sweep_dir: Path, epoch: int) -> list[dict[str, Any]]:
    return read_rung(sweep_dir, epoch).arrivals


def rung_epochs(sweep_dir: Path) -> list[int]:
    """The epochs of the rungs some run has reached, in order."""
    folder = Path(sweep_dir) / SEARCH_DIR
    names = [p.name for p in folder.glob("rung-*.jsonl")] if folder.is_dir() else []
    return sorted(int(name[5:-6]) for name in names if name[5:-6].isdigit())


def rung_summary(sweep_dir: Path, keep: float) -> dict[str, Any]:
    """For `status` (one small file per rung): "rungs", each rung some run reached with how many
    reached it and how many of those went on (by the rule, per group); and "runs", each run that
    reached a rung: the last it reached, and whether it was paused there and then promoted."""
    rungs, runs = [], {}
    for epoch in rung_epochs(sweep_dir):
        rung = read_rung(sweep_dir, epoch)
        went_on = sum(len(rung.went_on(group, keep)) for group in {a["group"] for a in rung.arrivals})
        rungs.append({"epoch": epoch, "reached": len(rung.arrivals), "went_on": went_on})
        later = rung.paused_then_promoted(keep)
        runs.update({a["run"]: {"rung": epoch, "promoted": a["run"] in later} for a in rung.arrivals})
    return {"rungs": rungs, "runs": runs}
