"""Token-budget micro-batches for RL experiences: which rows of a rollout go through one forward/backward.

An experience (prompts x G completions) can be far larger than what fits in memory in one pass: 16 PubMedQA
completions of ~1,050 tokens each are ~17k tokens, whose activations alone take most of a 24 GiB machine. A
micro-batch's cost is its *padded* size: the rows are cut to the prompt columns any of them uses (prompts are
left-padded) and the completion columns any of them uses (right-padded), so

    cost(rows) = len(rows) * (max_{i in rows} prompt_len_i + max_{i in rows} completion_len_i)

:func:`token_budget_batches` packs rows by length (longest first, so rows of similar length share a
micro-batch and little is padding) into micro-batches whose cost stays within ``max_tokens`` and whose row
count stays within ``max_rows``. A row longer than the budget on its own goes alone (a sequence is never cut).
The split changes nothing in the maths: each micro-batch's loss is weighted by its share of the window
(``batch_weight``), so the accumulated gradient equals one pass over the whole experience.
"""

from __future__ import annotations

from collections.abc import Sequence


def padded_tokens(prompt_lengths: Sequence[int], completion_lengths: Sequence[int], rows: Sequence[int]) -> int:
    """``len(rows) * (max prompt length + max completion length)`` over ``rows``: the micro-batch's tensor size."""
    if not rows:
        return 0
    return len(rows) * (max(prompt_lengths[i] for i in rows) + max(completion_lengths[i] for i in rows))


def token_budget_batches(prompt_lengths: Sequence[int], completion_lengths: Sequence[int], *,
                         max_tokens: int | None = None, max_rows: int | None = None) -> list[list[int]]:
    """Row indices grouped into micro-batches: each has ``padded_tokens <= max_tokens`` (unless it is a single
    row that alone exceeds it) and at most ``max_rows`` rows; every row appears exactly once.

    Rows are taken longest first (prompt + completion length; ties keep row order, so the result is
    deterministic) and added to the open micro-batch while both limits hold; otherwise the next micro-batch
    starts. Inside a micro-batch rows keep ascending index order. ``None`` for a limit means no limit; with both
    None the whole experience is one micro-batch in row order (the one-pass behaviour).
    """
    n = len(prompt_lengths)
    if len(completion_lengths) != n:
        raise ValueError(f"{n} prompt lengths but {len(completion_lengths)} completion lengths")
    if max_tokens is not None and not (isinstance(max_tokens, int) and max_tokens >= 1):
        raise ValueError(f"max_tokens must be None or an integer >= 1, got {max_tokens!r}")
    if max_rows is not None and not (isinstance(max_rows, int) and max_rows >= 1):
        raise ValueError(f"max_rows must be None or an integer >= 1, got {max_rows!r}")
    if n == 0:
        return []
    if max_tokens is None and max_rows is None:
        return [list(range(n))]
    order = sorted(range(n), key=lambda i: -(prompt_lengths[i] + completion_lengths[i]))
    out: list[list[int]] = []
    current: list[int] = []
    max_p = max_c = 0
    for i in order:
        p, c = max(max_p, prompt_lengths[i]), max(max_c, completion_lengths[i])
        fits = (max_rows is None or len(current) < max_rows) and (
            max_tokens is None or (len(current) + 1) * (p + c) <= max_tokens)
        if current and not fits:
            out.append(sorted(current))
            current, p, c = [], prompt_lengths[i], completion_lengths[i]
        current.append(i)
        max_p, max_c = p, c
    out.append(sorted(current))
    return out
