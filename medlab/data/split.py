"""Which rows (or query groups) a `val_split` holds out: one rule and one function for SFT/CPT, retrieval and
prompt data.

    held_out_count(n, fraction, minimum, maximum)     # how many units
    train_idx, val_idx = hold_out(groups, n_val, seed)  # which rows: whole groups, fixed by the seed

- ``round(n * fraction)``, raised to ``minimum`` (but the minimum never takes more than a quarter of a small
  file) and to at least 1, lowered to ``maximum`` (null = no cap);
- never all of them: at least one unit stays for training, so a file of one row holds out nothing;
- ``fraction == 0`` holds out nothing.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence


def held_out_count(n: int, fraction: float, minimum: int = 1, maximum: int | None = None) -> int:
    """Units to hold out of `n` for validation (see the module docstring); 0 = no validation split."""
    if fraction <= 0 or n < 2:
        return 0
    k = max(round(n * fraction), min(int(minimum or 1), n // 4), 1)
    if maximum is not None:
        k = min(k, int(maximum))
    return max(min(k, n - 1), 0)


def split_option_problems(val_split: float, minimum: object, maximum: object) -> list[str]:
    """What is wrong with `val_split`, `val_split_min`, `val_split_max` (empty list = nothing)."""
    problems = []
    if not isinstance(val_split, (int, float)) or not 0.0 <= float(val_split) < 1.0:
        problems.append(f"data.val_split must be a fraction in [0, 1), got {val_split!r}")
    if not (isinstance(minimum, int) and not isinstance(minimum, bool) and minimum >= 1):
        problems.append(f"data.val_split_min must be an integer >= 1, got {minimum!r}")
    if maximum is not None and not (isinstance(maximum, int) and not isinstance(maximum, bool) and maximum >= 1):
        problems.append(f"data.val_split_max must be null or an integer >= 1, got {maximum!r}")
    return problems


def hold_out(
    groups: int | Sequence[Hashable], n_val: int, seed: int, *, shuffled: bool = False
) -> tuple[list[int], list[int]]:
    """Row indices ``(train, val)`` with ``n_val`` whole groups held out, fixed by `seed`.

    `groups`: one group key per row (rows of a group land on one side: retrieval holds out queries), or the
    number of rows (each row its own group). The distinct keys are sorted and shuffled with
    ``random.Random(seed)``; the first ``n_val`` are held out, and both splits keep the rows' order.
    ``shuffled=True`` (SFT/CPT rows, kept so their runs reproduce) draws the groups with numpy's
    ``default_rng(seed).permutation`` instead and returns both splits in that drawn order, as
    ``datasets.Dataset.train_test_split`` does.
    """
    keys = list(range(groups)) if isinstance(groups, int) else list(groups)
    distinct = sorted(set(keys))
    if shuffled:
        import numpy as np

        order = [distinct[i] for i in np.random.default_rng(seed).permutation(len(distinct))]
        members: dict[Hashable, list[int]] = {}
        for index, key in enumerate(keys):
            members.setdefault(key, []).append(index)
        return ([i for key in order[n_val:] for i in members[key]], [i for key in order[:n_val] for i in members[key]])
    random.Random(seed).shuffle(distinct)
    val = set(distinct[:n_val])
    return [i for i, key in enumerate(keys) if key not in val], [i for i, key in enumerate(keys) if key in val]
