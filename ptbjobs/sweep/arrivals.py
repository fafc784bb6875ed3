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
from ptbjobs.sweep.search import promoted_at_rung

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
        promoted = promoted_at_rung(self.group(group), keep)
        last = self.closed.get(group)
        return promoted + [last] if last is not None and last not in promoted else promoted


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


def rung_summary(sweep_dir: Path, keep: float) -> list[dict[str, Any]]:
    """Each rung some run reached: its epoch, how many reached it, and how many of those went on
    from it (by the rule, per group). For `status`: one small file per rung."""
    summary = []
    for epoch in rung_epochs(sweep_dir):
        rung = read_rung(sweep_dir, epoch)
        went_on = sum(len(rung.went_on(group, keep)) for group in {a["group"] for a in rung.arrivals})
        summary.append({"epoch": epoch, "reached": len(rung.arrivals), "went_on": went_on})
    return summary
