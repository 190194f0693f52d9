"""The report's PNG plots (matplotlib, Agg backend: no display needed): radar of the dimension means, bars of the
means with their bootstrap confidence intervals, box plots of the per-answer scores per dimension.

matplotlib is an optional dependency (``pip install 'medlab[report]'``); :func:`require_matplotlib` raises a
``ConfigError`` saying so when it is missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medlab.config import ConfigError

PLOTS = ("radar", "bars", "box")


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or a ConfigError telling how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(["the comparison report draws its plots with matplotlib, which is not installed: "
                           "pip install 'medlab[report]' (or pip install matplotlib)"]) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _num(value: Any, default: float = float("nan")) -> float:
    """A float, ``default`` for None / NaN (a dimension no answer of a model could be scored on)."""
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _colors(plt: Any, n: int) -> list:
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def radar(means: Mapping[str, Mapping[str, float]], dimensions: Sequence[str], path: Path) -> Path:
    """One polygon per model over the dimensions (means in [0, 1])."""
    plt = require_matplotlib()
    angles = [2 * math.pi * i / len(dimensions) for i in range(len(dimensions))]
    fig = plt.figure(figsize=(6, 6))
    ax = fig.add_subplot(111, polar=True)
    for color, (model, by_dim) in zip(_colors(plt, len(means)), means.items()):
        values = [_num(by_dim.get(d), 0.0) for d in dimensions]
        ax.plot(angles + angles[:1], values + values[:1], color=color, linewidth=2, label=model)
        ax.fill(angles + angles[:1], values + values[:1], color=color, alpha=0.15)
    ax.set_xticks(angles)
    ax.set_xticklabels(dimensions)
    ax.set_ylim(0, 1)
    ax.set_title("Dimension means", pad=20)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize=8)
    return _save(plt, fig, path)


def bars(means: Mapping[str, Mapping[str, float]], cis: Mapping[str, Mapping[str, Sequence[float]]],
         dimensions: Sequence[str], path: Path) -> Path:
    """Grouped bars: for each dimension one bar per model, with its confidence interval as an error bar."""
    plt = require_matplotlib()
    models = list(means)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(dimensions)), 4))
    for i, (color, model) in enumerate(zip(_colors(plt, len(models)), models)):
        xs = [d + (i - (len(models) - 1) / 2) * width for d in range(len(dimensions))]
        ys = [_num(means[model].get(d)) for d in dimensions]
        low = [max(0.0, y - _num(cis[model][d][0], y)) if not math.isnan(y) else 0.0 for y, d in zip(ys, dimensions)]
        high = [max(0.0, _num(cis[model][d][1], y) - y) if not math.isnan(y) else 0.0 for y, d in zip(ys, dimensions)]
        ax.bar(xs, ys, width, yerr=[low, high], capsize=3, color=color, label=model)
    ax.set_xticks(range(len(dimensions)))
    ax.set_xticklabels(dimensions)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean score (95% bootstrap CI)")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def boxes(scores: Mapping[str, Mapping[str, Sequence[float]]], dimensions: Sequence[str], path: Path) -> Path:
    """One panel per dimension, one box per model (the per-answer scores)."""
    plt = require_matplotlib()
    models = list(scores)
    cols = min(3, len(dimensions))
    rows = math.ceil(len(dimensions) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for k, dim in enumerate(dimensions):
        ax = axes[k // cols][k % cols]
        data = [[v for v in scores[m].get(dim, []) if v is not None and not math.isnan(v)] or [float("nan")]
                for m in models]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(models) + 1))
        ax.set_xticklabels(models, rotation=20, fontsize=7)
        ax.set_title(dim)
        ax.set_ylim(-0.05, 1.05)
    for k in range(len(dimensions), rows * cols):
        axes[k // cols][k % cols].axis("off")
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
