"""The statistics of a comparison from its per-answer scores (pure: rows in, a JSON-able dict out).

For each dimension and model: the mean of the scored answers, its percentile bootstrap 95% CI (seeded) and the
count. For each dimension and pair of models (A, B), in the order the models were given: Mann-Whitney U (the
answers as independent samples; effect = rank-biserial, > 0 when A scores higher) and, when both answered the
same questions, the Wilcoxon signed-rank test on the per-question pairs (effect = matched-pairs rank-biserial).
p-values are Holm-corrected over the whole family of one test (every dimension x pair), so the report's
``p_holm < 0.05`` controls the family-wise error over the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

from medlab.evaluation.compare import stats


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def scores_by_model(rows: Sequence[Mapping[str, Any]], models: Sequence[str], dimensions: Sequence[str]
                    ) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{model: {dimension: {question_id: score or None}}}``."""
    out: dict[str, dict[str, dict[str, Any]]] = {m: {d: {} for d in dimensions} for m in models}
    for r in rows:
        for d in dimensions:
            out[r["model"]][d][r["id"]] = r.get(d)
    return out


def summarize(rows: Sequence[Mapping[str, Any]], models: Sequence[str], dimensions: Sequence[str], *,
              confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """``{means: {model: {dim: {mean, ci_low, ci_high, n}}}, tests: [...], alpha, confidence}``."""
    by = scores_by_model(rows, models, dimensions)
    means: dict[str, dict[str, dict[str, Any]]] = {}
    for m in models:
        means[m] = {}
        for d in dimensions:
            vals = _finite(by[m][d].values())
            low, high = stats.bootstrap_ci(vals, confidence=confidence, n_resamples=n_resamples, seed=seed)
            means[m][d] = {"mean": sum(vals) / len(vals) if vals else math.nan, "ci_low": low, "ci_high": high,
                           "n": len(vals)}
    tests = []
    for d in dimensions:
        for a, b in combinations(models, 2):
            xa, xb = _finite(by[a][d].values()), _finite(by[b][d].values())
            row: dict[str, Any] = {"dimension": d, "a": a, "b": b, "mean_a": means[a][d]["mean"],
                                   "mean_b": means[b][d]["mean"], "mwu": None, "wilcoxon": None}
            if xa and xb:
                row["mwu"] = stats.mann_whitney_u(xa, xb).as_dict()
            shared = [q for q in by[a][d] if q in by[b][d]
                      and _finite([by[a][d][q]]) and _finite([by[b][d][q]])]
            if shared and set(by[a][d]) == set(by[b][d]):
                row["wilcoxon"] = stats.wilcoxon_signed_rank([by[a][d][q] for q in shared],
                                                             [by[b][d][q] for q in shared]).as_dict()
            tests.append(row)
    for test in ("mwu", "wilcoxon"):
        have = [t for t in tests if t[test] is not None]
        for t, p in zip(have, stats.holm([t[test]["pvalue"] for t in have])):
            t[test]["p_holm"] = p
            t[test]["significant"] = bool(p < alpha)
    return {"means": means, "tests": tests, "alpha": alpha, "confidence": confidence, "n_resamples": n_resamples,
            "seed": seed}
