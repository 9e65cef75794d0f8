"""Holm's correction and the paired bootstraps of the study (property tests where a rule holds for all inputs)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hbt.bench.stats import Measure, compare, holm, mean_of, resample_seeds, rng_for, select

p_values = st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=30)


@given(p_values)
def test_holm_lies_between_the_raw_p_and_bonferroni_and_keeps_the_order(raw):
    adjusted = holm(raw)
    m = len(raw)
    for p, q in zip(raw, adjusted):
        assert p <= q + 1e-12 and q <= min(1.0, m * p) + 1e-12
    for i in range(m):
        for j in range(m):
            if raw[i] < raw[j]:
                assert adjusted[i] <= adjusted[j] + 1e-12


@given(p_values, st.floats(0.001, 0.2))
def test_holm_rejects_what_the_step_down_procedure_rejects(raw, alpha):
    """Reject the k smallest, where k is the first position with p_(k+1) > alpha / (m - k)."""
    ordered = sorted(raw)
    m, k = len(raw), 0
    while k < m and ordered[k] <= alpha / (m - k):
        k += 1
    rejected = sorted(p for p, q in zip(raw, holm(raw)) if q <= alpha)
    assert len(rejected) == k and rejected == ordered[:k]


def test_holm_on_a_known_example():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def arm(ids, values):
    """One group 'mono/en' of a arm: values [seeds, questions]."""
    return {"mono/en": (np.asarray(ids), np.atleast_2d(np.asarray(values, dtype=float)))}


scores = st.lists(st.floats(0, 1, allow_nan=False), min_size=5, max_size=40)


@settings(max_examples=40, deadline=None)
@given(scores, st.floats(-0.5, 0.5, allow_nan=False), st.integers(1, 3))
def test_a_constant_shift_is_found_exactly_whatever_the_resample(values, shift, seeds):
    ids = [f"q{i:03d}" for i in range(len(values))]
    base = np.tile(values, (seeds, 1))
    question, hierarchical = compare(arm(ids, base + shift), arm(ids, base), rng_for("shift"), 200)
    for d in (question, hierarchical):
        assert d.observed == pytest.approx(shift, abs=1e-9)
        assert d.low == pytest.approx(shift, abs=1e-9) and d.high == pytest.approx(shift, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(scores, scores)
def test_swapping_the_arms_negates_the_difference_and_keeps_p(first, second):
    n = min(len(first), len(second))
    ids = [f"q{i:03d}" for i in range(n)]
    a, b = arm(ids, first[:n]), arm(ids, second[:n])
    forward, _ = compare(a, b, rng_for("x"), 300)
    backward, _ = compare(b, a, rng_for("x"), 300)
    assert backward.observed == pytest.approx(-forward.observed)
    assert (backward.low, backward.high) == pytest.approx((-forward.high, -forward.low))
    assert backward.p == pytest.approx(forward.p)


def test_seed_variance_widens_the_hierarchical_interval_only():
    """Two arms with the same questions' noise; arm a's seeds disagree by ±0.05: only the hierarchical interval sees it."""
    rng = np.random.default_rng(3)
    ids = [f"q{i:03d}" for i in range(400)]
    base = rng.random(400)
    a = arm(ids, np.stack([base + 0.05, base - 0.05, base + 0.05, base - 0.05]))
    b = arm(ids, base)
    question, hierarchical = compare(a, b, rng_for("seeds"), 2000)
    assert question.high - question.low < 1e-9  # the per-seed mean is base: no question noise left
    assert hierarchical.high - hierarchical.low > 0.04


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=2, max_size=5, unique=True))
def test_resampled_seeds_have_the_variance_of_a_mean_of_independent_seeds(seed_values):
    """Var of the resampled seed mean is s² / n (s² the seeds' sample variance), not (n − 1)/n of it."""
    seeds = np.asarray(seed_values)
    assume(seeds.std() > 1e-3)
    resampled = resample_seeds(np.tile(seeds, (40_000, 1)), rng_for("variance"))
    assert resampled.mean() == pytest.approx(seeds.mean(), abs=0.05 * seeds.std(ddof=1))
    assert resampled.var() == pytest.approx(seeds.var(ddof=1) / len(seeds), rel=0.05)


def test_a_real_difference_and_a_null_one():
    rng = np.random.default_rng(0)
    ids = [f"q{i:03d}" for i in range(300)]
    base = rng.random(300)
    real, _ = compare(arm(ids, base + 0.05 + rng.normal(0, 0.05, 300)), arm(ids, base), rng_for("real"))
    assert real.low > 0 and real.p == 2 / 2001  # every resample above 0: the smallest p 2000 resamples can give, not 0
    null, _ = compare(arm(ids, base + rng.normal(0, 0.1, 300)), arm(ids, base), rng_for("null"))
    assert null.low < 0 < null.high and null.p > 0.05


def test_each_comparison_has_its_own_generator():
    assert rng_for("a").random() == rng_for("a").random() != rng_for("b").random()


def test_select_pools_or_averages_and_filters_languages():
    arrays = {"multi/en|ids": np.array(["1", "2"]), "multi/en|ap": np.array([1.0, 1.0]), "multi/en|bias": np.zeros(2),
              "multi/de|ids": np.array(["1", "2", "3", "4"]), "multi/de|ap": np.zeros(4), "multi/de|bias": np.full(4, 6.0)}
    pooled = select([arrays], Measure("multi", "multi", pooled=True))
    assert mean_of(pooled) == [pytest.approx(2 / 6)]  # 6 queries, 2 hits
    assert mean_of(select([arrays], Measure("m", "multi"))) == [pytest.approx(0.5)]  # mean of the languages' means
    assert mean_of(select([arrays], Measure("b", "multi", "bias", pooled=True))) == [pytest.approx(4.0)]
    assert list(select([arrays], Measure("d", "multi", keep=lambda lang: lang == "de"))) == ["multi/de"]


def test_arms_on_different_questions_are_refused():
    with pytest.raises(ValueError, match="different questions"):
        compare(arm(["a", "b"], [1, 0]), arm(["a", "c"], [1, 0]), rng_for("x"))
