"""Statistics of a model comparison: pure numpy functions, checked against ``scipy.stats`` in the tests (scipy is
a test-only dependency; nothing here imports it).

- :func:`rankdata`: average ranks of ties (``scipy.stats.rankdata(method="average")``) and the tie group sizes.
- :func:`mann_whitney_u`: two independent samples, two-sided. ``method="auto"`` follows scipy's
  ``mannwhitneyu``: the exact null distribution when either sample has at most 8 values and there are no ties,
  else the normal approximation with the tie-corrected variance and a 0.5 continuity correction. The effect size
  is the rank-biserial correlation ``r = 2 U1 / (n1 n2) - 1`` = P(x > y) - P(x < y) (ties count half): +1 when
  every x beats every y.
- :func:`wilcoxon_signed_rank`: paired samples (the same questions answered by two models), two-sided, zero
  differences dropped (scipy's ``zero_method="wilcox"``). ``method="auto"``: exact when 1..50 non-zero
  differences without ties or zeros (as scipy), else the normal approximation with the tie-corrected variance and,
  as scipy's default, no continuity correction (``correction=True`` adds it). Where scipy's ``auto`` would run a
  permutation test (ties or zeros with n <= 13), this uses the normal approximation. Effect size: the matched-pairs
  rank-biserial ``(R+ - R-) / (R+ + R-)``.
- :func:`holm`: Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1).
- :func:`bootstrap_ci`: percentile bootstrap confidence interval of the mean, seeded (``numpy.random.default_rng``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

MWU_EXACT_MAX = 8        # scipy: exact when min(n1, n2) <= 8 and no ties
WILCOXON_EXACT_MAX = 50  # scipy: exact when n <= 50 and no ties or zeros


@dataclass(frozen=True)
class TestResult:
    """One test: ``statistic`` (U1 of the first sample for Mann-Whitney; min(R+, R-) for Wilcoxon, as scipy),
    the two-sided ``pvalue``, the ``effect`` size (rank-biserial, see the module doc), the ``method`` used and
    the sample size(s) ``n``."""

    statistic: float
    pvalue: float
    effect: float
    method: str
    n: tuple[int, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def rankdata(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(ranks, tie_sizes)``: 1-based ranks with ties given their average rank, and the size of every group of
    equal values (1 for a value without ties)."""
    a = np.asarray(values, dtype=float)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    sizes = np.diff(np.r_[starts, len(s)])
    avg = starts + (sizes + 1) / 2.0  # mean of the 1-based ranks start+1 .. start+size
    ranks = np.empty(len(a))
    ranks[order] = np.repeat(avg, sizes)
    return ranks, sizes


@lru_cache(maxsize=64)
def _mwu_counts(n1: int, n2: int) -> np.ndarray:
    """Number of arrangements giving each U = 0 .. n1*n2 (coefficients of the Gaussian binomial [n1+n2, n1]_q):
    c(m, n, u) = c(m-1, n, u-n) + c(m, n-1, u)."""
    table = [[None] * (n2 + 1) for _ in range(n1 + 1)]
    for m in range(n1 + 1):
        for n in range(n2 + 1):
            if m == 0 or n == 0:
                c = np.zeros(m * n + 1)
                c[0] = 1.0
            else:
                c = np.zeros(m * n + 1)
                left = table[m - 1][n]            # the largest value is an x: it beats all n y's
                c[n:n + len(left)] += left
                right = table[m][n - 1]
                c[:len(right)] += right
            table[m][n] = c
    return table[n1][n2]


def mann_whitney_u(x: Sequence[float], y: Sequence[float], *, method: str = "auto",
                   continuity: bool = True) -> TestResult:
    """Two-sided Mann-Whitney U test of ``x`` vs ``y`` (see the module doc); needs a value on each side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("mann_whitney_u needs at least one value in each sample")
    ranks, ties = rankdata(np.concatenate([x, y]))
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    u = max(u1, n1 * n2 - u1)
    if method == "auto":
        method = "asymptotic" if (n1 > MWU_EXACT_MAX and n2 > MWU_EXACT_MAX) or (ties > 1).any() else "exact"
    if method == "exact":
        counts = _mwu_counts(n1, n2)
        p = 2.0 * counts[int(math.ceil(u)):].sum() / counts.sum()
    elif method == "asymptotic":
        n = n1 + n2
        tie_term = float((ties.astype(float) ** 3 - ties).sum())
        s = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1)))) if n > 1 else 0.0
        num = u - n1 * n2 / 2.0 - (0.5 if continuity else 0.0)
        p = 2.0 * _normal_sf(num / s) if s > 0 else 1.0
    else:
        raise ValueError(f"method={method!r}: auto | exact | asymptotic")
    effect = 2.0 * u1 / (n1 * n2) - 1.0
    return TestResult(u1, float(min(max(p, 0.0), 1.0)), effect, method, (n1, n2))


@lru_cache(maxsize=64)
def _wilcoxon_counts(n: int) -> np.ndarray:
    """Number of sign assignments giving each R+ = 0 .. n(n+1)/2 for ranks 1..n (no ties)."""
    c = np.zeros(n * (n + 1) // 2 + 1)
    c[0] = 1.0
    for k in range(1, n + 1):
        c[k:] = c[k:] + c[:-k]  # rank k given a + sign adds k to R+
    return c


def wilcoxon_signed_rank(x: Sequence[float], y: Sequence[float], *, method: str = "auto",
                         correction: bool = False) -> TestResult:
    """Two-sided Wilcoxon signed-rank test of the pairs ``(x[i], y[i])`` (see the module doc). All pairs equal:
    p = 1, effect 0 (scipy returns nan there)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"wilcoxon_signed_rank needs paired samples of one length, got {len(x)} and {len(y)}")
    d = x - y
    zeros = int((d == 0).sum())
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return TestResult(0.0, 1.0, 0.0, "no_differences", (len(x),))
    ranks, ties = rankdata(np.abs(d))
    r_plus, r_minus = float(ranks[d > 0].sum()), float(ranks[d < 0].sum())
    if method == "auto":
        method = "exact" if n <= WILCOXON_EXACT_MAX and not (ties > 1).any() and zeros == 0 else "asymptotic"
    if method == "exact":
        counts = _wilcoxon_counts(n)
        total = counts.sum()
        sf = counts[int(math.floor(r_plus)):].sum() / total
        cdf = counts[:int(math.ceil(r_plus)) + 1].sum() / total
        p = 2.0 * min(sf, cdf)
    elif method == "asymptotic":
        mean = n * (n + 1) / 4.0
        tie_term = float((ties.astype(float) ** 3 - ties).sum())
        se = math.sqrt((n * (n + 1) * (2 * n + 1) - tie_term / 2.0) / 24.0)
        z = (r_plus - mean) / se
        if correction:
            z -= math.copysign(0.5 / se, z) if z != 0 else 0.0
        p = 2.0 * _normal_sf(abs(z))
    else:
        raise ValueError(f"method={method!r}: auto | exact | asymptotic")
    effect = (r_plus - r_minus) / (r_plus + r_minus)
    return TestResult(min(r_plus, r_minus), float(min(max(p, 0.0), 1.0)), effect, method, (len(x),))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order: the i-th smallest p (1-based) times (m - i + 1),
    made non-decreasing along that order and capped at 1. NaN stays NaN and is not counted in m."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    running = 0.0
    for i, j in enumerate(idx[np.argsort(p[idx], kind="mergesort")]):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out.tolist()


def bootstrap_ci(values: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` of the mean of ``values``: ``n_resamples`` resamples with
    replacement drawn by ``numpy.random.default_rng(seed)``. One value (or all equal): ``(v, v)``; none: nans."""
    a = np.asarray(values, dtype=float)
    if len(a) == 0:
        return (math.nan, math.nan)
    if np.all(a == a[0]):
        return (float(a[0]), float(a[0]))
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, len(a), size=(n_resamples, len(a)))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(low), float(high))
