"""The search's pieces on their own: the promotion rule against hand-worked examples, the sampler,
and the [search] table's checks."""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

import pytest
import tomllib

from ptbjobs.sweep.grid import parse_grid
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


def _replayed(arrivals: list[tuple[str, float]], keep: float) -> list[str]:
    """The rule as written: after each arrival, sort all the arrivals so far and take the best."""
    promoted: list[str] = []
    for n in range(1, len(arrivals) + 1):
        ranked = sorted((metric, order, key) for order, (key, metric) in enumerate(arrivals[:n]) if math.isfinite(metric))
        for _, _, key in ranked[:math.floor(n * keep)]:
            if key not in promoted:
                promoted.append(key)
    return promoted


def test_the_rule_kept_ranked_as_runs_arrive_promotes_exactly_what_replaying_every_arrival_does():
    rng = random.Random(3)
    for trial in range(300):
        n = rng.randint(1, 40)
        # few distinct metrics: many ties; some diverged runs
        arrivals = [(f"r{i}", rng.choice([math.inf, math.nan] + [float(rng.randint(80, 90))] * 8)) for i in range(n)]
        keep = rng.choice([0.1, 1 / 3, 0.5, 0.75, 0.99])
        assert promoted_at_rung(arrivals, keep) == _replayed(arrivals, keep), (trial, keep)


SEARCH_GRID = '''name = "s"
[defaults]
epochs = 8
[search]
rungs = [2, 4]
samples = 3
seed = 5
[axes]
cell = ["lstm", "gru"]
lr = { loguniform = [0.1, 2.0] }
dropout = { uniform = [0.1, 0.6] }
tie_weights = { choice = [true, false] }
'''


def test_a_search_grid_crosses_its_list_axes_with_the_same_seeded_draws():
    grid = parse_grid(SEARCH_GRID, Path("grid.toml"))
    assert len(grid.runs) == 6 and grid.search.rungs == (2, 4) and grid.search.group_by == ("cell",)
    lstm = [(r.config.lr, r.config.dropout, r.config.tie_weights) for r in grid.runs if r.config.cell.value == "lstm"]
    gru = [(r.config.lr, r.config.dropout, r.config.tie_weights) for r in grid.runs if r.config.cell.value == "gru"]
    assert lstm == gru and len(set(lstm)) == 3  # each cell tries the same three settings
    assert all(0.1 <= lr <= 2.0 and 0.1 <= dropout <= 0.6 for lr, dropout, _ in lstm)
    assert [r.key for r in parse_grid(SEARCH_GRID, Path("grid.toml")).runs] == [r.key for r in grid.runs]
    reseeded = parse_grid(SEARCH_GRID.replace("seed = 5", "seed = 6"), Path("grid.toml"))
    assert [r.key for r in reseeded.runs] != [r.key for r in grid.runs]
    # the key names every axis, in the file's order: the drawn values tell the runs apart
    first = grid.runs[0]
    assert first.key == f"lstm-d{first.config.dropout:g}-s1-lr{first.config.lr:g}-tieweights" + \
        ("T" if first.config.tie_weights else "F")


@pytest.mark.parametrize("change, message", [
    (("samples = 3\n", ""), "grid.toml:9: axes.lr: a range is drawn from only by a random search"),
    (("lr = { loguniform = [0.1, 2.0] }\ndropout = { uniform = [0.1, 0.6] }\ntie_weights = { choice = [true, false] }\n",
      "lr = [1.0]\n"), "grid.toml:6: search.samples: no axis is a range to draw from"),
    (("rungs = [2, 4]", "rungs = [2, 9]"), "grid.toml:5: search.rungs: 9 is past the last epoch of run lstm-"),
    (("[0.1, 0.6]", "[0.1, 1.5]"), "grid.toml:11: axes.dropout: must be in [0, 1), got 1.5"),
    (("[true, false]", "[true, true]"), "grid.toml:12: axes.tie_weights: lists a choice twice"),
    (('cell = ["lstm", "gru"]', 'cell = ["lstm", "gru"]\nseed = { uniform = [1, 9] }'),
     "grid.toml:10: axes.seed: uniform draws real numbers, and seed is not one"),
    (("[search]", '[[overrides]]\nmatch = { lr = 1.0 }\nclip = 1.0\n[search]'),
     "grid.toml:5: overrides[0].lr: is a ranged axis: each draw has its own value"),
    (("[search]", '[search]\ngroup_by = ["lr"]'), "grid.toml:5: search.group_by: 'lr' is not an axis of this grid"),
    (("samples = 3", "samples = 5"), "grid.toml:6: search.samples: 5 draws wanted: the ranges gave only 4 different"),
])
def test_a_search_grid_that_cannot_be_drawn_or_judged_is_refused_with_one_line(change, message):
    text = SEARCH_GRID.replace(*change)
    if "samples = 5" in text:  # two choices of two: four different points at most
        text = text.replace("lr = { loguniform = [0.1, 2.0] }\ndropout = { uniform = [0.1, 0.6] }\n",
                            "lr = { choice = [0.5, 1.0] }\n")
    with pytest.raises(GridError) as caught:
        parse_grid(text, Path("grid.toml"))
    assert str(caught.value).startswith(message), str(caught.value)


def test_draws_that_repeat_an_earlier_one_are_drawn_again():
    ranges = {"lr": Distribution("choice", (0.5, 1.0)), "clip": Distribution("choice", (1.0, 5.0))}
    points = sample_points(ranges, 4, seed=1)
    assert len({repr(p) for p in points}) == 4  # all four points of two choices of two
    with pytest.raises(ValueError, match="only 4 different points"):
        sample_points(ranges, 5, seed=1)
