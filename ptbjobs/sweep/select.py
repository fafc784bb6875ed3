"""`submit --only KEY=VALUE`: part of a grid, chosen by its runs' settings."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ptbjobs.core.errors import ConfigError
from ptbjobs.sweep.grid import Grid
from ptbjobs.train.config import FIELD_DEFAULTS, coerce, suggest_key


def select_runs(grid: Grid, only: list[str]) -> Grid:
    """The grid cut to the runs whose settings match every `KEY=VALUE` of `only`; a key given more
    than once matches any of its values (`seed=2`, `seed=3`). A pilot then runs part of a grid
    without a hand-cut copy of it, and the sweep keeps the text of the whole grid."""
    allowed: dict[str, set[Any]] = {}
    for item in only:
        key, equals, raw = (part.strip() for part in item.partition("="))
        key = key.replace("-", "_")  # as the flag of `ptbjobs train` spells it: tie-weights
        if not equals or not key or not raw:
            raise ConfigError(None, f"--only {item}: not KEY=VALUE", "e.g. --only seed=2 --only cell=gru")
        if key not in FIELD_DEFAULTS:
            raise ConfigError(None, f"--only {item}: {key!r} is not a training setting", suggest_key(key, FIELD_DEFAULTS))
        try:
            wanted = coerce(key, raw)
        except ConfigError as exc:
            raise ConfigError(None, f"--only {item}: {key} {exc.message}", exc.hint) from None
        present = {getattr(spec.config, key) for spec in grid.runs}
        matched = _matching_values(present, wanted)
        if not matched:
            plain = sorted(getattr(value, "value", value) for value in present)  # as _describe writes a value
            listed = ", ".join(str(value) for value in plain)
            raise ConfigError(None, f"--only {item}: no run of {grid.path} has that {key}", f"its runs have {listed}")
        allowed.setdefault(key, set()).update(matched)
    runs = [spec for spec in grid.runs if all(getattr(spec.config, key) in values for key, values in allowed.items())]
    if not runs:
        raise ConfigError(None, f"--only: no run of {grid.path} has all of {' '.join(only)}",
                          "ptbjobs submit --dry-run without --only lists the grid's runs")
    return dataclasses.replace(grid, runs=runs)


def _matching_values(present: set[Any], wanted: Any) -> set[Any]:
    """The grid's values of one setting that `wanted` names: itself, or for a number typed short,
    the values it rounds from (0.8333 for the grid's 1 / 1.2), unless that is ambiguous."""
    if wanted in present or not isinstance(wanted, float):
        return {wanted} & present
    close = {value for value in present if math.isclose(value, wanted, rel_tol=1e-4)}
    return close if len(close) == 1 else set()
