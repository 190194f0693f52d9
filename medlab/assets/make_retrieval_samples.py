"""Write the sample retrieval data (``sample/retrieval_*.jsonl``, ``sample/rerank_*.jsonl``) from the sample Q&A.

Derived only from medlab's own sample SFT rows (see ``make_sample_data.py``); deterministic::

    python -m medlab.assets.make_retrieval_samples

- ``retrieval_pairs.jsonl`` / ``val_retrieval_pairs.jsonl``: ``{"question", "answer"}`` (question -> its answer).
- ``rerank_train.jsonl`` / ``val_rerank.jsonl``: ``{"qid", "question", "answer", "judgment" (1-4), "label"}``:
  each question's own answer (judgment 4), two answers to the lexically closest other questions
  (judgment 2) and three random answers (judgment 1); ``label = judgment >= 3``.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SEED = 7


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower())) | set(re.findall(r"[\u4e00-\u9fff]", text))


def _pairs(name: str) -> list[dict]:
    rows = [json.loads(line) for line in (SAMPLE_DIR / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    seen, out = set(), []
    for r in rows:
        q = (r["instruction"] + (" " + r["input"] if r.get("input") else "")).strip()
        if q not in seen:
            seen.add(q)
            out.append({"question": q, "answer": r["output"]})
    return out


def _rerank(pairs: list[dict], rng: random.Random, prefix: str) -> list[dict]:
    out = []
    for i, p in enumerate(pairs):
        toks = _tokens(p["question"])
        others = [j for j in range(len(pairs)) if pairs[j]["answer"] != p["answer"]]
        close = sorted(others, key=lambda j: (-len(toks & _tokens(pairs[j]["question"])), j))[:2]
        rest = [j for j in others if j not in close]
        far = rng.sample(rest, 3)
        cands = [(p["answer"], 4)] + [(pairs[j]["answer"], 2) for j in close] + [(pairs[j]["answer"], 1) for j in far]
        rng.shuffle(cands)
        for answer, judgment in cands:
            out.append({"qid": f"{prefix}{i}", "question": p["question"], "answer": answer, "judgment": judgment,
                        "label": int(judgment >= 3)})
    return out


def _write(name: str, rows: list[dict]) -> None:
    with open(SAMPLE_DIR / name, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(SEED)
    train, val = _pairs("sft_alpaca.jsonl"), _pairs("val_sft_alpaca.jsonl")
    _write("retrieval_pairs.jsonl", train)
    _write("val_retrieval_pairs.jsonl", val)
    _write("rerank_train.jsonl", _rerank(train[:120], rng, "t"))
    _write("val_rerank.jsonl", _rerank(val, rng, "v"))


if __name__ == "__main__":
    main()
