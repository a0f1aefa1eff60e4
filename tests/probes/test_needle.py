"""Needle scoring (RULER string_match_all / _part) and the shared statistics helpers."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffeval.probes import needle as N
from diffeval.probes import retrieval as R
from diffeval.probes.scoring import string_match_all, string_match_part
from diffeval.stats import average_by, mean_per_cell, wilson
from diffeval.tokenizers import ByteTokenizer

# --- string match ----------------------------------------------------------------------------


@pytest.mark.parametrize("expected, prediction, score", [
    (["4821337"], " 4821337.", 1.0),  # the usual greedy continuation
    (["4821337"], "4821337", 1.0),
    (["4821337"], " 4821336.", 0.0),  # one digit off
    (["4821337"], " 482133", 0.0),  # cut short
    (["4821337"], "", 0.0),  # empty
    (["Bramble"], "the answer is BRAMBLE!", 1.0),  # case-insensitive both ways
    (["bramble"], "Bramble", 1.0),
    (["7e0c1a52-3b1f-4c2d-9e8a-1f2b3c4d5e6f"], "7E0C1A52-3B1F-4C2D-9E8A-1F2B3C4D5E6F", 1.0),
    (["1111111", "2222222"], "1111111 and 2222222", 1.0),  # all of several
    (["1111111", "2222222"], "only 2222222 here", 0.5),  # partly right
    (["1111111", "2222222", "3333333", "4444444"], "3333333", 0.25),
    (["1111111", "2222222"], "neither", 0.0),
])
def test_score_prediction_string_match_all(expected, prediction, score):
    assert string_match_all(expected, prediction) == score


def test_score_any_is_string_match_part():
    assert string_match_part(["1111111", "2222222"], "2222222") == 1.0
    assert string_match_part(["1111111", "2222222"], "3333333") == 0.0
    assert string_match_part(["Walnut"], "walnut") == 1.0


@pytest.mark.parametrize("expected, needle", [
    ([], "at least one"), ([""], "at least one"), ("1234567", "not the string '1234567'"),
])
def test_score_rejects_bad_expected(expected, needle):
    with pytest.raises(ValueError, match=needle):  # a bug in a caller, not user input
        string_match_all(expected, "anything")


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.from_regex(r"[1-9][0-9]{6}", fullmatch=True), min_size=1, max_size=6, unique=True),
       mask=st.lists(st.booleans(), min_size=6, max_size=6), noise=st.text(alphabet="abc xyz.", max_size=20))
def test_score_counts_exactly_the_values_present(values, mask, noise):
    shown = [v for v, keep in zip(values, mask) if keep]
    prediction = noise + " ".join(shown) + noise
    assert string_match_all(values, prediction) == pytest.approx(len(shown) / len(values))


def test_score_sample_averages_queries_and_keeps_the_record():
    cfg = N.NeedleConfig(lengths=(700,), depths=(50,), n_needles=3, n_queries=2, samples=1, seed=1)
    sample = R.generate(cfg.grid(), ByteTokenizer())[0]
    right, wrong = f" {sample.expected[0]}.", " 0000000."
    record = N.score_sample(sample, [right, wrong])
    assert record["query_scores"] == [1.0, 0.0] and record["score"] == 0.5
    assert record["prediction"] == [right, wrong] and record["id"] == sample.id
    assert record["all_correct"] is False
    json.dumps(record)
    assert N.score_sample(sample, [right, f" {sample.expected[1].upper()}"])["score"] == 1.0
    # The other needle's value is a distractor, not an answer.
    assert N.score_sample(sample, [f" {sample.expected[1]}.", f" {sample.expected[0]}."])["score"] == 0.0
    with pytest.raises(ValueError, match="2 queries need as many predictions, got 1"):
        N.score_sample(sample, [right])
    with pytest.raises(ValueError, match="got ' 1'"):
        N.score_sample(sample, " 1")


# --- Wilson interval -------------------------------------------------------------------------


@pytest.mark.parametrize("k, n, lo, hi", [
    # Worked by hand from the score interval: the roots p of (k/n - p)^2 = z^2 p (1 - p) / n.
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (5, 10, 0.2366, 0.7634),
    (1, 20, 0.0089, 0.2361),
    (45, 50, 0.7864, 0.9565),
])
def test_wilson_known_values(k, n, lo, hi):
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), frac=st.floats(0, 1), z=st.sampled_from([1.0, 1.645, 1.96, 2.576]))
def test_wilson_bounds_solve_the_score_equation(n, frac, z):
    k = round(frac * n)
    lo, hi = wilson(k, n, z)
    p_hat = k / n
    assert 0.0 <= lo <= p_hat <= hi <= 1.0
    for p in (lo, hi):
        if 0.0 < p < 1.0:  # clamped ends are exact 0 / 1 only when k is 0 / n
            assert (p_hat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, rel=1e-6, abs=1e-12)
    assert (lo == 0.0) == (k == 0) and (hi == 1.0) == (k == n)


def test_wilson_edges_and_errors():
    assert wilson(0, 0) == (0.0, 1.0)
    # Fractional successes (partial scores) fall between their integer neighbours.
    assert wilson(2, 5)[0] < wilson(2.5, 5)[0] < wilson(3, 5)[0]
    assert wilson(2, 5)[1] < wilson(2.5, 5)[1] < wilson(3, 5)[1]
    narrow, wide = wilson(50, 100), wilson(5, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    for args, needle in (((11, 10), r"k \(11\) must lie in \[0, n\] with n = 10"),
                         ((-1, 10), r"k \(-1\)"), ((1, -2), r"n \(-2\)"), ((1, 2.5), r"n \(2.5\)"),
                         ((1, 2, 0.0), r"z \(0.0\)")):
        with pytest.raises(ValueError, match=needle):
            wilson(*args)


# --- aggregation -----------------------------------------------------------------------------

ROWS = [
    {"model": "a", "length": 4096, "depth": 0.0, "score": 1.0},
    {"model": "a", "length": 4096, "depth": 0.0, "score": 0.0},
    {"model": "a", "length": 4096, "depth": 50.0, "score": 1.0},
    {"model": "a", "length": 8192, "depth": 0.0, "score": 0.5},
    {"model": "a", "length": 8192, "depth": 50.0, "score": 0.0},
    {"model": "b", "length": 4096, "depth": 0.0, "score": 1.0},
]


def test_mean_per_cell_groups_sorts_and_adds_intervals():
    cells = mean_per_cell(ROWS, keys=("model", "length", "depth"))
    assert [(c["model"], c["length"], c["depth"]) for c in cells] == [
        ("a", 4096, 0.0), ("a", 4096, 50.0), ("a", 8192, 0.0), ("a", 8192, 50.0), ("b", 4096, 0.0)]
    first = cells[0]
    assert (first["mean"], first["n"]) == (0.5, 2)
    assert first["ci95"] == list(wilson(1, 2))
    assert cells[2]["mean"] == 0.5 and cells[2]["ci95"] == list(wilson(0.5, 1))
    assert mean_per_cell(ROWS, keys=("length",))[0] == {"length": 4096, "mean": 0.75, "n": 4, "ci95": list(wilson(3, 4))}
    json.dumps(cells)


def test_average_by_gives_the_avg_row():
    cells = mean_per_cell(ROWS, keys=("model", "length", "depth"))
    avg = average_by(cells, by=("model", "length"))
    assert avg == [
        {"model": "a", "length": 4096, "mean": 0.75, "n_cells": 2, "n": 3},
        {"model": "a", "length": 8192, "mean": 0.25, "n_cells": 2, "n": 2},
        {"model": "b", "length": 4096, "mean": 1.0, "n_cells": 1, "n": 1},
    ]
    by_depth = average_by(cells, by=("model", "depth"))
    assert by_depth[0] == {"model": "a", "depth": 0.0, "mean": 0.5, "n_cells": 2, "n": 3}


def test_aggregation_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"row 0 lacks depth"):
        mean_per_cell([{"length": 1, "score": 1.0}])
    with pytest.raises(ValueError, match=r"score 1.5 is outside \[0, 1\]"):
        mean_per_cell([{"length": 1, "depth": 0, "score": 1.5}])


def test_config_to_dict_is_json_and_complete():
    cfg = N.NeedleConfig(lengths=[1024, 2048], depths=[0, 50], n_needles=3, n_queries=2, seed=5)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["lengths"] == [1024, 2048] and d["depths"] == [0.0, 50.0]
    assert (d["task"], d["version"], d["n_needles"], d["n_queries"], d["seed"]) == ("needle", N.VERSION, 3, 2, 5)
    assert cfg.lengths == (1024, 2048)  # lists become tuples: the config is hashable data
