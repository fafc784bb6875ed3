"""The search's pieces on their own: the promotion rule against hand-worked examples, the sampler,
and the [search] table's checks."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import tomllib

from ptbjobs.sweep.grid_lines import GridError, KeyLocator
from ptbjobs.sweep.search import Distribution, Search, parse_distribution, parse_search, promoted_at_rung, sample_points


def test_runs_go_on_from_a_rung_as_asha_promotes_them_worked_by_hand():
    # keep a third: of n arrivals, the best floor(n / 3) go on, and a run promoted stays promoted
    arrivals = [("a", 100.0), ("b", 90.0), ("c", 95.0), ("d", 80.0), ("e", math.inf), ("f", 85.0), ("g", 70.0)]
    # n=1, 2: no room (floor < 1): a and b pause. n=3: b is the best of a, b, c: promoted (from its
    # pause). n=4: d, best of four, goes on at once. n=5: e diverged, d still first: nothing new.
    # n=6: room for 2: d and f. n=7: room for 2: g and d; b, now fourth, is not taken back.
    expected_after = {1: [], 2: [], 3: ["b"], 4: ["b", "d"], 5: ["b", "d"], 6: ["b", "d", "f"], 7: ["b", "d", "f", "g"]}
    for n, promoted in expected_after.items():
        assert promoted_at_rung(arrivals[:n], keep=1 / 3) == promoted, n


def test_a_tie_goes_to_the_run_that_reached_the_rung_first():
    assert promoted_at_rung([("x", 90.0), ("y", 90.0), ("z", 100.0)], keep=1 / 3) == ["x"]
    assert promoted_at_rung([("z", 100.0), ("y", 90.0), ("x", 90.0)], keep=1 / 3) == ["y"]
    assert promoted_at_rung([("p", 90.0), ("q", 90.0)], keep=0.5) == ["p"]


def test_a_run_that_diverged_at_a_rung_counts_but_never_goes_on():
    arrivals = [("nan", math.nan), ("inf", math.inf), ("ok", 120.0)]
    assert promoted_at_rung(arrivals, keep=1 / 3) == ["ok"]  # three arrivals: room for one, the only finite
    assert promoted_at_rung(arrivals, keep=0.99) == ["ok"]  # room for two: still never a diverged run
    assert promoted_at_rung(arrivals[:2], keep=0.99) == []


def test_the_same_seed_draws_the_same_points_inside_their_bounds():
    ranges = {"lr": Distribution("loguniform", (0.1, 2.0)), "dropout": Distribution("uniform", (0.1, 0.6)),
              "cell": Distribution("choice", ("lstm", "gru"))}
    first, again, other = (sample_points(ranges, 500, seed=seed) for seed in (7, 7, 8))
    assert first == again and first != other
    assert all(0.1 <= p["lr"] <= 2.0 and 0.1 <= p["dropout"] <= 0.6 and p["cell"] in ("lstm", "gru") for p in first)
    # log-uniform: half the draws below the bounds' geometric mean (0.447), not their middle (1.05)
    assert 0.40 < statistics.median(p["lr"] for p in first) < 0.50
    assert 0.30 < statistics.median(p["dropout"] for p in first) < 0.40
    assert {p["cell"] for p in first} == {"lstm", "gru"}
    assert all(p["lr"] == float(f"{p['lr']:.4g}") for p in first)  # four significant digits: readable keys


def _where(text: str) -> KeyLocator:
    return KeyLocator(Path("grid.toml"), text)


def _search(text: str, axes=("cell", "lr")) -> Search:
    return parse_search(tomllib.loads(text)["search"], axes, _where(text))


def test_a_search_table_is_read_with_its_defaults():
    assert _search("[search]\nrungs = [2, 4, 8]\nkeep = 0.25\nsamples = 12\n") == \
        Search(metric="valid_ppl", rungs=(2, 4, 8), keep=0.25, group_by=("cell",), samples=12, seed=0)


@pytest.mark.parametrize("body, message", [
    ("rungs = [4, 2]", "grid.toml:3: search.rungs: must increase, got [4, 2]"),
    ("rungs = [0, 2]", "grid.toml:3: search.rungs: must be a list of epochs"),
    ("rungs = 4", "grid.toml:3: search.rungs: must be a list of epochs"),
    ("keep = 1", "grid.toml:3: search.keep: must be a fraction between 0 and 1, got 1"),
    ("keep = true", "grid.toml:3: search.keep: must be a fraction between 0 and 1"),
    ('metric = "test_ppl"', "grid.toml:3: search.metric: must be one of valid_ppl, train_ppl, got 'test_ppl'"),
    ('group_by = ["seed"]', "grid.toml:3: search.group_by: 'seed' is not an axis of this grid"),
    ("samples = -1", "grid.toml:3: search.samples: must be a whole number from 0 to 100,000, got -1"),
    ("pruner = 1", "grid.toml:3: search.pruner: unknown key"),
])
def test_a_bad_search_key_is_one_line_naming_file_line_and_key(body, message):
    with pytest.raises(GridError) as caught:
        _search(f'name = "s"\n[search]\n{body}\n')
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("spec, message", [
    ("{ normal = [0, 1] }", "grid.toml:2: axes.lr: a range is one of loguniform, uniform, choice"),
    ("{ uniform = [0.6, 0.1] }", "grid.toml:2: axes.lr: uniform: low must be below high"),
    ("{ loguniform = [0, 1] }", "grid.toml:2: axes.lr: loguniform needs low > 0"),
    ("{ uniform = [0.1] }", "grid.toml:2: axes.lr: uniform must be [low, high], two numbers"),
    ("{ choice = [] }", "grid.toml:2: axes.lr: choice must be a list of values"),
])
def test_a_bad_range_is_one_line_naming_its_axis(spec, message):
    text = f"[axes]\nlr = {spec}\n"
    with pytest.raises(GridError) as caught:
        parse_distribution("lr", tomllib.loads(text)["axes"]["lr"], _where(text))
    assert str(caught.value).startswith(message)
