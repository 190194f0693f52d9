"""``eval.mode=loglik``: multiple-choice accuracy from the options' log-likelihoods, as lm-evaluation-harness
scores ``pubmed_qa``, ``medqa_4options`` and ``cmmlu``.

    metrics, records = evaluate_loglik(model, tokenizer, rows, {"prompt_style": "auto", "num_fewshot": 0}, pool=[])
    # metrics: acc, acc_norm (= accuracy, accuracy_norm), num_questions, prompt_style, num_fewshot, acc/<subject>
    # records: id, question, prediction, prediction_norm, reference, correct, correct_norm, choices, loglik, ...

Per question: the prompt (:mod:`medlab.evaluation.mcq`: the harness's text, optional few-shot block) is scored
against each choice's continuation (:func:`medlab.evaluation.loglik.option_logliks`); ``acc`` takes the argmax of
the summed log-likelihoods, ``acc_norm`` the argmax of log-likelihood / the choice's length in characters (the
harness's ``acc_norm``). A question without a usable gold answer counts as wrong (``num_without_answer``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medlab.evaluation.loglik import option_logliks
from medlab.evaluation.mcq import STYLES, FewShot, build_items, choice_problems, prompt_style


def argmax(values: Sequence[float]) -> int:
    """The first index of the maximum (numpy's argmax tie rule, as the harness uses)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def score_items(items, scores) -> tuple[dict[str, Any], list[dict]]:
    """Metrics + per-question records of :class:`~medlab.evaluation.mcq.Item` s and their option scores."""
    records, by_subject = [], {}
    for item, sc in zip(items, scores, strict=True):
        lls = [s.loglik for s in sc]
        pred = argmax(lls)
        pred_norm = argmax([ll / len(c) for ll, c in zip(lls, item.choices)])
        rec = {"id": item.id, "question": item.question, "prediction": item.choices[pred],
               "prediction_norm": item.choices[pred_norm], "reference": item.reference,
               "correct": item.gold is not None and pred == item.gold,
               "correct_norm": item.gold is not None and pred_norm == item.gold,
               "choices": item.choices, "loglik": lls, "tokens": [s.tokens for s in sc],
               "greedy": [s.greedy for s in sc]}
        if item.fields.get("subject") is not None:
            rec["subject"] = item.fields["subject"]
            by_subject.setdefault(str(item.fields["subject"]), []).append(rec["correct"])
        records.append(rec)
    n = len(records)
    acc = sum(r["correct"] for r in records) / n
    acc_norm = sum(r["correct_norm"] for r in records) / n
    metrics: dict[str, Any] = {"mode": "loglik", "acc": acc, "acc_norm": acc_norm, "accuracy": acc,
                               "accuracy_norm": acc_norm, "num_questions": n,
                               "num_without_answer": sum(r["reference"] is None for r in records)}
    metrics.update({f"acc/{k}": sum(v) / len(v) for k, v in sorted(by_subject.items())})
    return metrics, records


def evaluate_loglik(model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]], ev: Mapping[str, Any],
                    pool: Sequence[Mapping[str, Any]] = (), *, batch_size: int = 16,
                    progress=None) -> tuple[dict[str, Any], list[dict]]:
    """Loglik accuracy of ``model`` on normalized QA ``rows`` (the ``qa`` format); ``ev``: ``prompt_style``
    (auto | pubmedqa | medqa | cmmlu | mcq), ``contexts_in_prompt`` (PubMedQA abstracts; null = yes),
    ``num_fewshot`` with ``pool`` (few-shot rows), ``fewshot_sampler`` (random | first_n), ``fewshot_seed``."""
    style = prompt_style(str(ev.get("prompt_style") or "auto"), rows)
    if style not in STYLES:
        raise ValueError(f"eval.prompt_style={style!r}; expected one of {', '.join(STYLES)}")
    problems = choice_problems(rows, style)
    if problems:
        raise ValueError("\n".join(problems[:20]))
    contexts = True if ev.get("contexts_in_prompt") is None else bool(ev.get("contexts_in_prompt"))
    n_shots = int(ev.get("num_fewshot") or 0) if pool else 0
    seed = int(ev["fewshot_seed"]) if ev.get("fewshot_seed") is not None else 1234
    fewshot = FewShot(pool, n_shots, style, sampler=str(ev.get("fewshot_sampler") or "random"), seed=seed,
                      contexts=contexts) if n_shots else None
    items = build_items(rows, style, fewshot=fewshot, contexts=contexts)
    scores = option_logliks(model, tokenizer, [(it.context, it.continuations) for it in items],
                            batch_size=batch_size, progress=progress)
    metrics, records = score_items(items, scores)
    metrics.update(prompt_style=style, num_fewshot=n_shots, contexts_in_prompt=contexts)
    return metrics, records
