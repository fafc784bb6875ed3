"""Grid files: a TOML description of a sweep, validated strictly and expanded into RunSpecs.

    name = "zaremba-small"              # the sweep; its folder is runs/<name>/
    [defaults]                          # any training field (see `ptbjobs train --help`)
    epochs = 13
    [axes]                              # the runs are the cartesian product of these lists
    cell = ["lstm", "gru"]
    dropout = [0.0, 0.25]
    seed = [1, 2, 3]
    [[overrides]]                       # fields for the points matching `match`, in file order
    match = { cell = "gru" }
    lr = 0.5
    [[exclude]]                         # drop the points matching these axis values
    [[include]]                         # add a point: a value for every axis, plus any fields
                                        # (a point of the grid with fields of its own is another run)
    [resources]                         # what each job asks the scheduler for
    [targets]                           # validation-perplexity goals the report marks

Nothing is written or submitted for a grid that does not pass: every problem is one line naming the
file, the line where it can be found, the key, and what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import tomllib

from ptbjobs.core.errors import ConfigError
from ptbjobs.sweep.grid_lines import GridError, KeyLocator
from ptbjobs.sweep.grid_resources import Resources, Targets, parse_resources, parse_targets
from ptbjobs.sweep.identity import config_hash, hash_of_changes
from ptbjobs.sweep.search import Distribution, Search, check_rungs, parse_distribution, parse_search, sample_points
from ptbjobs.train.config import FIELD_DEFAULTS, TrainConfig, coerce

TOP_LEVEL_KEYS = ("name", "data_dir", "defaults", "axes", "overrides", "include", "exclude", "resources", "targets",
                  "search")
MAX_RUNS_WITHOUT_YES = 10_000
MAX_RUNS = 1_000_000
_SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class RunSpec:
    key: str
    config: TrainConfig
    point: dict[str, Any]  # the axis values that made this run

    def config_hash(self) -> str:
        if "_hash" not in self.__dict__:  # asked of every run by the grid's check and by submit's plan
            object.__setattr__(self, "_hash", config_hash(self.config))
        return self.__dict__["_hash"]


@dataclass
class Grid:
    name: str
    path: Path
    text: str
    runs: list[RunSpec]
    axes: dict[str, list[Any]]
    resources: Resources = field(default_factory=Resources)
    targets: Targets = field(default_factory=Targets)
    data_dir: str | None = None
    search: Search | None = None  # the [search] table, where the grid has one
    whole_runs: list[RunSpec] = field(default_factory=list)  # every run, also of a grid cut by --only


def _full_hash(config: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:8]


def load_grid(path: Path, allow_large: bool = False) -> Grid:
    try:
        text = path.read_text()
    except OSError as exc:
        raise GridError(None, f"{path}: cannot read the grid file ({exc.strerror})", "check the --grid path") from None
    except UnicodeDecodeError:
        raise GridError(None, f"{path}: not UTF-8 text", "a grid is a TOML text file") from None
    return parse_grid(text, path, allow_large)


def parse_grid(text: str, path: Path, allow_large: bool = True) -> Grid:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GridError(None, f"{path}: not valid TOML: {exc}", "fix the syntax at that line") from None
    where = KeyLocator(path, text)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise where.error("", key, "unknown top-level key", "valid keys: " + ", ".join(TOP_LEVEL_KEYS))
    name = data.get("name")
    if not isinstance(name, str) or not _SWEEP_NAME.fullmatch(name):
        raise where.error("", "name", f"the sweep needs a name of letters, digits, '.', '_', '-' (got {name!r})",
                          'add e.g. name = "zaremba-small" at the top')
    data_dir = data.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise where.error("", "data_dir", "must be a string path")
    defaults = _training_fields(_table(data, "defaults", where), "defaults", where)
    axes, ranges = _axes(_table(data, "axes", where), where)
    search = parse_search(data["search"], axes, where) if "search" in data else None
    _check_sampling(search, ranges, where)
    order = [key for key in _table(data, "axes", where)]  # the axes as the file lists them, for run keys
    overrides = [_override(entry, i, axes, ranges, where) for i, entry in enumerate(_array(data, "overrides", where))]
    excludes = [_partial_point(entry, "exclude", i, axes, where, ranges)
                for i, entry in enumerate(_array(data, "exclude", where))]
    includes = [_include(entry, i, order, where) for i, entry in enumerate(_array(data, "include", where))]
    samples = search.samples if search and ranges else 1
    size = math.prod(len(values) for values in axes.values()) * samples + len(includes)
    if size > MAX_RUNS_WITHOUT_YES and not allow_large or size > MAX_RUNS:
        raise GridError(None, f"{path}: the grid expands to {size:,} runs",
                        "add --yes if you mean it" if size <= MAX_RUNS else f"split it: at most {MAX_RUNS:,} runs a grid")
    draws = [{axis: _check_field("axes", axis, value, where) for axis, value in draw.items()}
             for draw in _draws(ranges, search, where)] if search and ranges else [{}]
    runs = _expand(where, defaults, axes, draws, order, overrides, excludes, includes)
    if search:
        check_rungs(search, runs, where)
    return Grid(name=name, path=path, text=text, runs=runs, axes=axes,
                resources=parse_resources(_table(data, "resources", where), where),
                targets=parse_targets(_table(data, "targets", where), where), data_dir=data_dir, search=search,
                whole_runs=runs)


# ---- pieces ----

def _table(data: dict, name: str, where: KeyLocator) -> dict:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise where.error("", name, f"must be a table [{name}]")
    return value


def _array(data: dict, name: str, where: KeyLocator) -> list[dict]:
    value = data.get(name, [])
    if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        raise where.error("", name, f"must be an array of tables [[{name}]]")
    return value


def _check_field(table: str, key: str, value: Any, where: KeyLocator, index: int = 0) -> Any:
    """Coerce one training field and check its own range; errors name the grid key."""
    if key not in FIELD_DEFAULTS:
        raise where.error(table, key, "not a training field", "valid fields: " + ", ".join(FIELD_DEFAULTS), index)
    try:
        converted = coerce(key, value)
        TrainConfig(**{key: converted})
    except ConfigError as exc:
        if exc.field != key:  # a constraint between fields: judged per run, once all are known
            return converted
        raise where.error(table, key, exc.message, exc.hint, index) from None
    return converted


def _training_fields(entries: dict, table: str, where: KeyLocator, index: int = 0) -> dict[str, Any]:
    return {key: _check_field(table, key, value, where, index) for key, value in entries.items()}


def _axes(table: dict, where: KeyLocator) -> tuple[dict[str, list[Any]], dict[str, Distribution]]:
    """(the axes given as lists of values, those given as ranges to draw from)"""
    if not table:
        raise where.error("", "axes", "the grid has no [axes] table",
                          'add e.g. [axes] with cell = ["lstm", "gru"], dropout = [0.0], seed = [1]')
    axes, ranges = {}, {}
    for key, values in table.items():
        if isinstance(values, dict):
            ranges[key] = _range(key, values, where)
            continue
        if not isinstance(values, list):
            raise where.error("axes", key, f"must be a list of values, got {values!r}", f"write {key} = [{values!r}]")
        if not values:
            raise where.error("axes", key, "is empty: the grid would have no runs", "give at least one value")
        converted = [_check_field("axes", key, value, where) for value in values]
        if len(set(map(repr, converted))) != len(converted):
            raise where.error("axes", key, f"lists a value twice ({values})", "remove the duplicate")
        axes[key] = converted
    return axes, ranges


def _range(key: str, spec: dict, where: KeyLocator) -> Distribution:
    """A ranged axis of a search, its bounds or choices checked as values of the field."""
    distribution = parse_distribution(key, spec, where)
    if distribution.kind != "choice" and not isinstance(FIELD_DEFAULTS.get(key, 0.0), float):
        raise where.error("axes", key, f"{distribution.kind} draws real numbers, and {key} is not one",
                          f"give its values as a list, or as {key} = {{ choice = [...] }}")
    values = tuple(_check_field("axes", key, value, where) for value in distribution.values)
    if distribution.kind == "choice" and len(set(map(repr, values))) != len(values):
        raise where.error("axes", key, f"lists a choice twice ({list(distribution.values)})", "remove the duplicate")
    return dataclasses.replace(distribution, values=values)


def _draws(ranges: dict[str, Distribution], search: Search, where: KeyLocator) -> list[dict[str, Any]]:
    try:
        return sample_points(ranges, search.samples, search.seed)
    except ValueError as exc:
        raise where.error("search", "samples", f"{search.samples} draws wanted: {exc}",
                          "ask for fewer samples, or widen the ranges (more choices)") from None


def _check_sampling(search: Search | None, ranges: dict[str, Distribution], where: KeyLocator) -> None:
    """Ranged axes are drawn from only by a search with samples, and samples need a ranged axis."""
    if ranges and not (search and search.samples):
        axis = next(iter(ranges))
        raise where.error("axes", axis, "a range is drawn from only by a random search",
                          "add [search] with samples = N (the draws), or give the axis a list of values")
    if search and search.samples and not ranges:
        raise where.error("search", "samples", "no axis is a range to draw from",
                          "give an axis as e.g. lr = { loguniform = [0.1, 2.0] }, or remove samples")


def _partial_point(entry: dict, table: str, index: int, axes: dict, where: KeyLocator,
                   ranges: dict | None = None) -> dict[str, Any]:
    point = {}
    for key, value in entry.items():
        if key in (ranges or {}):
            raise where.error(table, key, "is a ranged axis: each draw has its own value",
                              "match on the axes given as lists: " + ", ".join(axes), index)
        if key not in axes:
            raise where.error(table, key, "is not an axis of this grid", "match on: " + ", ".join(axes), index)
        point[key] = _check_field(table, key, value, where, index)
    if not point:
        raise where.error("", table, f"[[{table}]] entry {index} names no axis value", "give e.g. cell = \"gru\"")
    return point


def _override(entry: dict, index: int, axes: dict, ranges: dict, where: KeyLocator) -> tuple[dict, dict]:
    match = entry.get("match")
    if not isinstance(match, dict) or not match:
        raise where.error("overrides", "match", "each [[overrides]] needs match = { axis = value, ... }",
                          'e.g. match = { cell = "gru" }', index)
    fields = {k: v for k, v in entry.items() if k != "match"}
    for key in fields:
        if key in axes or key in ranges:
            raise where.error("overrides", key, "is an axis: an override cannot change it",
                              "use [[exclude]] / [[include]] to change the points", index)
    return (_partial_point(match, "overrides", index, axes, where, ranges),
            _training_fields(fields, "overrides", where, index))


def _include(entry: dict, index: int, axes: list[str], where: KeyLocator) -> tuple[dict, dict]:
    missing = [axis for axis in axes if axis not in entry]
    if missing:
        raise GridError(None, f"{where.place(where.header_line('include', index))}: include[{index}]: "
                        f"lacks a value for axis {', '.join(missing)}", "an included point gives every axis a value")
    point = {axis: _check_field("include", axis, entry[axis], where, index) for axis in axes}
    extra = _training_fields({k: v for k, v in entry.items() if k not in axes}, "include", where, index)
    return point, extra


def _expand(where: KeyLocator, defaults: dict, axes: dict, draws: list[dict], order: list[str], overrides: list,
            excludes: list, includes: list) -> list[RunSpec]:
    """The runs: every point of the list axes, crossed with every draw of the ranged ones (the same
    draws at each point: the cells of a search try the same settings), then the included points."""
    path = where.path
    points = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    points = [p for p in points if not any(_matches(p, ex) for ex in excludes)]
    points = [({axis: {**p, **draw}[axis] for axis in order}, {}, None) for p in points for draw in draws]
    points += [(point, extra, index) for index, (point, extra) in enumerate(includes)]
    if not points:
        raise GridError(None, f"{path}: exclude: every point of the grid is excluded", "loosen the [[exclude]] entries")
    runs: list[RunSpec] = []
    run_of_config: dict[str, str] = {}
    for point, extra, include_index in points:
        values = dict(defaults)
        values.update(point)
        for match, fields in overrides:
            if _matches(point, match):
                values.update(fields)
        values.update(extra)
        try:
            config = TrainConfig(**values)  # each value was coerced and range-checked as the grid was read
        except ConfigError as exc:
            # the line where the field is first set; the value may come from defaults or an override
            line = where.line_of("", exc.field) if exc.field else None
            raise GridError(None, f"{where.place(line)}: the run {_describe(point)} gets an invalid config: "
                            f"{exc.field + ': ' if exc.field else ''}{exc.message}",
                            exc.hint or "fix the fields it takes from defaults and overrides") from None
        # an included point's own fields go into its key, as an axis would: it differs by them
        run = RunSpec(key=run_key(config, order + list(extra)), config=config, point=point)
        object.__setattr__(run, "_hash", hash_of_changes(values))  # what run.config_hash() gives, faster
        config_hash = run.config_hash()
        same = run_of_config.get(config_hash)
        if same is not None and include_index is not None:
            # an included point that repeats a run is refused; the same point with fields of its
            # own is another run (e.g. one rate's runs again with weight decay)
            place = f"{where.place(where.header_line('include', include_index))}: include[{include_index}]"
            if not extra:
                raise GridError(None, f"{place}: the point {_describe(point)} is already in the grid",
                                "remove the [[include]] or [[exclude]] it first, or give it fields of its own")
            raise GridError(None, f"{place}: gives the same run as {same} (its own fields change nothing)",
                            "remove the [[include]], or give it a field that differs")
        run_of_config.setdefault(config_hash, run.key)
        runs.append(run)
    _make_keys_unique(runs)
    return runs


def _describe(point: dict) -> str:
    """A point as a user wrote it: cell=lstm, seed=1."""
    return ", ".join(f"{axis}={getattr(value, 'value', value)}" for axis, value in point.items())


def _matches(point: dict, partial: dict) -> bool:
    return all(point.get(k) == v for k, v in partial.items())


def run_key(config: TrainConfig, axes: Iterable[str] = ()) -> str:
    """A readable key: cell, dropout and seed always, then every other axis of the grid.
    E.g. `lstm-d0.25-s1`, `gru-d0-s2-lr0.5`."""
    key = f"{config.cell.value}-d{config.dropout:g}-s{config.seed}"
    for axis in axes:
        if axis not in ("cell", "dropout", "seed"):
            value = getattr(config, axis)
            shown = {True: "T", False: "F"}.get(value, getattr(value, "value", value)) if isinstance(value, bool) \
                else getattr(value, "value", value)
            key += f"-{axis.replace('_', '')}{shown:g}" if isinstance(shown, float) else f"-{axis.replace('_', '')}{shown}"
    return key


def _make_keys_unique(runs: list[RunSpec]) -> None:
    """Two points whose readable keys print alike (0.1234567 and 0.1234568 both show as 0.123457)
    get a short hash of their config appended."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.key] = counts.get(run.key, 0) + 1
    for i, run in enumerate(runs):
        if counts[run.key] > 1:
            runs[i] = dataclasses.replace(run, key=f"{run.key}-{_full_hash(run.config)[:6]}")
