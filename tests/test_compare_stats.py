"""The comparison statistics (medlab/evaluation/compare/stats.py) equal scipy.stats on fixtures, Holm equals a
hand computation, the bootstrap is seeded and agrees with scipy's percentile bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from medlab.evaluation.compare import stats

scipy_stats = pytest.importorskip("scipy.stats")

# scores of the kind the report compares: many ties (0/1 accuracy, rubric steps), and continuous ones
FIXTURES = {
    "binary_ties": ([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0], [0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0]),
    "rubric_ties": ([1.0, 0.75, 1.0, 0.5, 1.0, 1.0, 0.75, 1.0, 1.0, 0.0], [0.75, 0.75, 0.5, 1.0, 0.5, 0.25, 0.75,
                                                                            1.0, 0.5, 0.75]),
    "continuous": (list(np.random.default_rng(0).normal(0.6, 0.1, 15)),
                   list(np.random.default_rng(1).normal(0.5, 0.1, 15))),
    "small_exact": ([0.31, 0.52, 0.77, 0.12, 0.95], [0.05, 0.44, 0.21, 0.68]),
    "one_each": ([0.3], [0.7]),
}


NO_TIES = ("continuous", "small_exact", "one_each")  # scipy's exact distribution assumes no ties


@pytest.mark.parametrize("name,method", [(n, m) for n in FIXTURES for m in ("auto", "asymptotic")]
                         + [(n, "exact") for n in NO_TIES])
def test_mann_whitney_u_equals_scipy(name, method):
    x, y = FIXTURES[name]
    ours = stats.mann_whitney_u(x, y, method=method)
    ref = scipy_stats.mannwhitneyu(x, y, alternative="two-sided", method=method, use_continuity=True)
    assert ours.statistic == pytest.approx(ref.statistic, abs=1e-12)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-10, abs=1e-14)
    assert ours.method == (method if method != "auto" else ("exact" if name in ("small_exact", "one_each")
                                                           else "asymptotic"))


def test_mann_whitney_without_continuity_and_the_rank_biserial_effect():
    x, y = FIXTURES["rubric_ties"]
    ours = stats.mann_whitney_u(x, y, method="asymptotic", continuity=False)
    ref = scipy_stats.mannwhitneyu(x, y, method="asymptotic", use_continuity=False)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-10)
    # rank-biserial = P(x > y) - P(x < y) over all pairs, counted by hand
    pairs = [(a, b) for a in x for b in y]
    by_hand = (sum(a > b for a, b in pairs) - sum(a < b for a, b in pairs)) / len(pairs)
    assert ours.effect == pytest.approx(by_hand)
    assert stats.mann_whitney_u([2, 3], [0, 1]).effect == 1.0 and stats.mann_whitney_u([0, 1], [2, 3]).effect == -1.0


def test_mann_whitney_random_inputs_equal_scipy():
    rng = np.random.default_rng(7)
    for _ in range(60):
        n1, n2 = rng.integers(1, 14, 2)
        x, y = rng.integers(0, 4, n1) / 3, rng.integers(0, 4, n2) / 3
        ours, ref = stats.mann_whitney_u(x, y), scipy_stats.mannwhitneyu(x, y)
        assert (ours.statistic, ours.pvalue) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-10, abs=1e-14)


PAIRED = {
    "continuous": (list(np.random.default_rng(2).normal(0.6, 0.2, 20)),
                   list(np.random.default_rng(3).normal(0.5, 0.2, 20))),
    "ties_and_zeros": ([1, 0.5, 0.75, 1, 0.25, 1, 0, 0.5, 1, 0.75, 1, 0.5, 0.75, 1],
                       [0.5, 0.5, 0.25, 0.75, 0.25, 0.5, 0.25, 0.25, 1, 0.25, 0.5, 0, 0.25, 0.5]),
    "large": (list(np.random.default_rng(4).normal(0, 1, 60)), list(np.random.default_rng(5).normal(0.3, 1, 60))),
}


# exact: no ties or zeros, n <= 50 (with ties scipy's auto runs a permutation test; ours: the normal approximation)
WILCOXON_CASES = [(n, "asymptotic", c) for n in PAIRED for c in (False, True)] + [
    ("continuous", "exact", False), ("continuous", "auto", False), ("large", "auto", False)]


@pytest.mark.parametrize("name,method,correction", WILCOXON_CASES)
def test_wilcoxon_signed_rank_equals_scipy(name, method, correction):
    x, y = PAIRED[name]
    ours = stats.wilcoxon_signed_rank(x, y, method=method, correction=correction)
    ref = scipy_stats.wilcoxon(x, y, method=method, correction=correction)
    assert ours.statistic == pytest.approx(ref.statistic, abs=1e-9)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-10, abs=1e-14)


def test_wilcoxon_effect_and_auto_with_ties_uses_the_normal_approximation():
    x, y = PAIRED["ties_and_zeros"]
    ours = stats.wilcoxon_signed_rank(x, y)
    assert ours.method == "asymptotic"
    ref = scipy_stats.wilcoxon(x, y, method="asymptotic")
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-10)
    d = np.asarray(x) - np.asarray(y)
    d = d[d != 0]
    ranks = scipy_stats.rankdata(np.abs(d))
    assert ours.effect == pytest.approx((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())
    same = stats.wilcoxon_signed_rank([1, 0.5], [1, 0.5])
    assert (same.pvalue, same.effect, same.method) == (1.0, 0.0, "no_differences")


def test_rankdata_equals_scipy():
    a = [0.5, 1, 0.5, 0, 1, 1, 0.25]
    ranks, ties = stats.rankdata(a)
    assert ranks.tolist() == scipy_stats.rankdata(a).tolist()
    assert sorted(ties.tolist()) == [1, 1, 2, 3]


def test_holm_equals_a_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005, float("nan"), 0.5]
    # m = 5 non-nan; sorted: 0.005 (x5 = 0.025), 0.01 (x4 = 0.04), 0.03 (x3 = 0.09), 0.04 (x2 = 0.08 -> 0.09
    # monotone), 0.5 (x1 = 0.5)
    adjusted = stats.holm(p)
    assert adjusted[:4] == pytest.approx([0.04, 0.09, 0.09, 0.025])
    assert np.isnan(adjusted[4]) and adjusted[5] == pytest.approx(0.5)
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([]) == []


def test_bootstrap_ci_is_seeded_and_matches_scipy_percentile():
    values = list(np.random.default_rng(3).normal(0.5, 0.2, 40))
    a = stats.bootstrap_ci(values, seed=1)
    assert a == stats.bootstrap_ci(values, seed=1) and a != stats.bootstrap_ci(values, seed=2)
    ref = scipy_stats.bootstrap((np.asarray(values),), np.mean, method="percentile", n_resamples=20000,
                                confidence_level=0.95, random_state=0).confidence_interval
    ours = stats.bootstrap_ci(values, n_resamples=20000, seed=0)
    assert ours == pytest.approx((ref.low, ref.high), abs=0.01)  # two Monte Carlo estimates of the same interval
    assert ours[0] < float(np.mean(values)) < ours[1]
    assert stats.bootstrap_ci([0.7, 0.7, 0.7]) == (0.7, 0.7)
    assert all(np.isnan(stats.bootstrap_ci([])))
