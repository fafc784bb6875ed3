"""A search over a sweep's runs: the `[search]` table of a grid, the random sampling of its ranged
axes, and asynchronous successive halving's rule (ASHA, Li et al., MLSys 2020) for which runs go
on from each rung.

    [search]
    metric = "valid_ppl"         # what ranks the runs at a rung (lower is better)
    rungs = [2, 4, 8, 16, 32]    # the epochs at which runs are compared
    keep = 0.333                 # the fraction of a rung's runs that goes on from it
    group_by = ["cell"]          # runs are compared only with runs of the same values of these
    samples = 20                 # random search: this many draws of the ranged axes
    seed = 0                     # the same grid and seed give the same draws
    [axes]
    cell = ["lstm", "gru"]                  # a list: every value, as in any grid
    lr = { loguniform = [0.1, 2.0] }        # a range: one value per draw
    dropout = { uniform = [0.1, 0.6] }
    weight_decay = { choice = [0.0, 1e-5] }

The rule is a function of what the runs recorded, in the order they reached the rung, so any
process holding the sweep's lock decides alike: a run reaching a rung goes on if it is among the
best floor(n * keep) of the n runs of its group that have reached that rung so far; else it is
paused (PRUNED) with its state saved, and is promoted (resumed where it stopped) as soon as the
runs arriving later make it one of the best. A promotion is never taken back. A run whose metric
is not a finite number (diverged) ranks below every other and is never promoted.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from typing import Any, Iterable

from ptbjobs.sweep.grid_lines import KeyLocator

METRICS = ("valid_ppl", "train_ppl")  # recorded each epoch in metrics.jsonl; lower is better
SEARCH_KEYS = ("metric", "rungs", "keep", "group_by", "samples", "seed")
DISTRIBUTIONS = ("loguniform", "uniform", "choice")
MAX_SAMPLES = 100_000


@dataclass(frozen=True)
class Search:
    metric: str = "valid_ppl"
    rungs: tuple[int, ...] = ()  # epochs, increasing; none: no pruning (random search alone)
    keep: float = 1 / 3
    group_by: tuple[str, ...] = ("cell",)
    samples: int = 0  # 0: no ranged axes, the grid's points only
    seed: int = 0


@dataclass(frozen=True)
class Distribution:
    """A ranged axis: `kind` one of DISTRIBUTIONS; `values` its two bounds, or its choices."""

    kind: str
    values: tuple[Any, ...]

    def draw(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return self.values[rng.randrange(len(self.values))]
        low, high = self.values
        if self.kind == "loguniform":
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        # four significant digits: readable run keys, and a draw still lands inside its bounds
        return min(max(float(f"{value:.4g}"), low), high)


def parse_search(table: Any, axes: Iterable[str], where: KeyLocator) -> Search:
    """The [search] table, checked: one line naming the key and what to do for each problem.
    `axes`: the grid's axes given as lists, those a group can be made of (by default, the cell's)."""
    if not isinstance(table, dict):
        raise where.error("", "search", "must be a table [search]")
    values: dict[str, Any] = {"group_by": tuple(axis for axis in Search.group_by if axis in axes)}
    for key, value in table.items():
        if key not in SEARCH_KEYS:
            raise where.error("search", key, "unknown key", "valid keys: " + ", ".join(SEARCH_KEYS))
    if "metric" in table:
        if table["metric"] not in METRICS:
            raise where.error("search", "metric", f"must be one of {', '.join(METRICS)}, got {table['metric']!r}")
        values["metric"] = table["metric"]
    if "rungs" in table:
        rungs = table["rungs"]
        if not isinstance(rungs, list) or not rungs or not all(_is_int(r) and r >= 1 for r in rungs):
            raise where.error("search", "rungs", f"must be a list of epochs (whole numbers >= 1), got {rungs!r}",
                              "e.g. rungs = [2, 4, 8, 16, 32]")
        if any(a >= b for a, b in zip(rungs, rungs[1:])):
            raise where.error("search", "rungs", f"must increase, got {rungs}", "list each epoch once, in order")
        values["rungs"] = tuple(rungs)
    if "keep" in table:
        keep = table["keep"]
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep < 1:
            raise where.error("search", "keep", f"must be a fraction between 0 and 1, got {keep!r}",
                              "e.g. keep = 0.333: a third of each rung's runs goes on")
        values["keep"] = float(keep)
    if "group_by" in table:
        group_by, known = table["group_by"], list(axes)
        if not isinstance(group_by, list) or not all(isinstance(g, str) for g in group_by):
            raise where.error("search", "group_by", f"must be a list of axis names, got {group_by!r}",
                              'e.g. group_by = ["cell"]')
        for name in group_by:
            if name not in known:
                raise where.error("search", "group_by", f"{name!r} is not an axis of this grid",
                                  "axes: " + ", ".join(known))
        values["group_by"] = tuple(group_by)
    for key, largest in (("samples", MAX_SAMPLES), ("seed", 2**63 - 1)):
        if key in table:
            if not _is_int(table[key]) or not 0 <= table[key] <= largest:
                raise where.error("search", key, f"must be a whole number from 0 to {largest:,}, got {table[key]!r}")
            values[key] = table[key]
    return Search(**values)


def parse_distribution(axis: str, spec: dict, where: KeyLocator) -> Distribution:
    """`{ loguniform = [low, high] }`, `{ uniform = [low, high] }` or `{ choice = [a, b, ...] }`
    (an axis of [axes]); the values are checked as the field's own by the grid after drawing."""
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise where.error("axes", axis, f"a range is one of {', '.join(DISTRIBUTIONS)}, got {spec!r}",
                          f"e.g. {axis} = {{ uniform = [0.1, 0.6] }}, or a list of values")
    kind, values = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise where.error("axes", axis, f"choice must be a list of values, got {values!r}")
        return Distribution(kind, tuple(values))
    if not (isinstance(values, list) and len(values) == 2 and all(_is_number(v) for v in values)):
        raise where.error("axes", axis, f"{kind} must be [low, high], two numbers, got {values!r}")
    low, high = float(values[0]), float(values[1])
    if not low < high:
        raise where.error("axes", axis, f"{kind}: low must be below high, got {values}")
    if kind == "loguniform" and low <= 0:
        raise where.error("axes", axis, f"loguniform needs low > 0, got {values}", "use uniform for a range from 0")
    return Distribution(kind, (low, high))


def sample_points(ranges: dict[str, Distribution], samples: int, seed: int) -> list[dict[str, Any]]:
    """`samples` different draws of the ranged axes, each axis in the order given: the same
    arguments give the same draws, whatever the machine. A draw equal to an earlier one (rounded to
    four digits, or a choice) is drawn again: two would be one run. Raises ValueError where the
    ranges do not hold that many different points."""
    rng = random.Random(seed)
    points: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(samples * 20 + 100):
        if len(points) == samples:
            break
        point = {axis: distribution.draw(rng) for axis, distribution in ranges.items()}
        if repr(point) not in seen:
            seen.add(repr(point))
            points.append(point)
    if len(points) < samples:
        raise ValueError(f"the ranges gave only {len(points)} different points in {samples * 20 + 100} draws")
    return points


def promoted_at_rung(arrivals: list[tuple[str, float]], keep: float) -> list[str]:
    """The runs that go on from a rung of one group, by the rule above, in the order they were
    promoted: `arrivals` is each run that has reached the rung with its metric there, in the order
    they reached it. After each arrival, the best floor(n * keep) of the n so far go on, a tie
    going to the earlier arrival; a run that went on when fewer had arrived is not taken back."""
    return list(promotions(arrivals, keep))


def promotions(arrivals: list[tuple[str, float]], keep: float) -> dict[str, int]:
    """Each run promoted from the rung -> the arrival (its index) that promoted it: its own where it
    went on as it arrived, a later one where it was paused first.

    The arrivals are replayed one by one, keeping them ranked (a sorted list): from one arrival to
    the next, the best k can only gain the new run or the one now ranked k-th, so each arrival
    costs a binary search and an insertion, not a sort of all the runs before it."""
    ranked: list[tuple[float, int, str]] = []  # (metric, order of arrival, run), finite metrics only
    promoted: dict[str, int] = {}
    for order, (key, metric) in enumerate(arrivals):
        if math.isfinite(metric):
            bisect.insort(ranked, (metric, order, key))
        count = min(math.floor((order + 1) * keep), len(ranked))
        candidates = [key] if math.isfinite(metric) and bisect.bisect_left(ranked, (metric, order, key)) < count else []
        if count:
            candidates.append(ranked[count - 1][2])
        for candidate in candidates:
            promoted.setdefault(candidate, order)
    return promoted


def group_of(point: dict[str, Any], group_by: Iterable[str]) -> str:
    """The group a run is compared within: its values of the `group_by` axes, e.g. "cell=lstm"
    ("" where runs are compared all together)."""
    return ",".join(f"{axis}={getattr(point[axis], 'value', point[axis])}" for axis in group_by)


def check_rungs(search: Search, runs: list[Any], where: KeyLocator) -> None:
    """Each rung must be an epoch every run reaches: a run of fewer epochs would never be judged there."""
    shortest = min(runs, key=lambda run: run.config.epochs)
    if search.rungs and search.rungs[-1] > shortest.config.epochs:
        raise where.error("search", "rungs", f"{search.rungs[-1]} is past the last epoch of run {shortest.key} "
                          f"({shortest.config.epochs} epochs)", "list rungs up to the runs' epochs")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
