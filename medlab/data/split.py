"""How many rows (or query groups) a `val_split` holds out: one rule for SFT/CPT, retrieval and prompt data.

    held_out_count(n, fraction, minimum, maximum)

- ``round(n * fraction)``, raised to ``minimum`` (but the minimum never takes more than a quarter of a small
  file) and to at least 1, lowered to ``maximum`` (null = no cap);
- never all of them: at least one unit stays for training, so a file of one row holds out nothing;
- ``fraction == 0`` holds out nothing.
"""

from __future__ import annotations


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
