"""Write the sample multiple-choice QA data (``sample/qa_mc_train.jsonl``, ``sample/qa_mc_val.jsonl``) for GRPO.

Built only from medlab's own hand-written fact tables (``make_sample_data.py``); deterministic (fixed seed)::

    python -m medlab.assets.make_qa_samples

Each row is ``{"id", "question", "options": {"A": ..., "E": ...}, "answer": letter, "lang", "topic", "contexts"}``
(the field names of ``../shared/data/qa/medqa_usmle_train.jsonl``, so the same data config reads both);
``contexts`` lists the paragraphs of ``sample/medical_corpus.txt`` about the right answer (the gold passages of
``retrieval_relevance`` in ``+experiment=agentic_rag``; not written into the prompt unless
``data.contexts_in_prompt=true``), empty for the held-out conditions, which the corpus leaves out:

- ``condition``: a condition's symptom description (its name masked) -> which condition (5 options);
- ``drug``: what a medicine is used for (its name masked) -> which medicine (5 options);
- ``lab``: which lab test a unit/explanation belongs to (5 options).

Every eighth row gives ``options`` as a plain list (letters implied by position) to exercise that format.
The validation file asks about the conditions held out of every training file (``HELD_OUT``), plus a
few drugs and labs with different distractors. Synthetic, for tests and demos, not for clinical use.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from medlab.assets import make_sample_data as S

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SEED = 11
LETTERS = "ABCDE"

STEMS = {
    "condition": {"en": "Which condition is described? {text}", "zh": "以下描述的是哪种疾病？{text}"},
    "drug": {"en": "Which medicine is this? {text}", "zh": "以下描述的是哪种药物？{text}"},
    "lab": {"en": "Which laboratory test is this about? {text}", "zh": "以下说明针对的是哪项化验？{text}"},
}
MASK = {"en": "this condition", "zh": "该病"}
DRUG_MASK = {"en": "This medicine", "zh": "该药"}


def _mask(text: str, names: list[str], repl: str) -> str:
    for name in sorted(names, key=len, reverse=True):
        text = re.sub(re.escape(name), repl, text, flags=re.IGNORECASE)
    return text[:1].upper() + text[1:]


def _gold(corpus: list[str], anchor: str) -> list[str]:
    """The corpus paragraphs that contain ``anchor`` (a fact's own text, so only the paragraph about it)."""
    return [p for p in corpus if anchor in p]


def _row(kind: str, lang: str, text: str, correct: str, pool: list[str], rng: random.Random, idx: int,
         gold: list[str]) -> dict:
    options = rng.sample([p for p in pool if p != correct], 4)
    options.insert(idx % 5, correct)  # balanced answer letters
    answer = LETTERS[idx % 5]
    opts: dict | list = {LETTERS[i]: o for i, o in enumerate(options)}
    if idx % 8 == 7:
        opts = options  # a list: letters implied by position
    return {"id": f"{kind}-{lang}-{idx}", "question": STEMS[kind][lang].format(text=text), "options": opts,
            "answer": answer, "lang": lang, "topic": kind, "contexts": gold}


def _conditions(conds: list[S.Condition], pool_conds: list[S.Condition], rng: random.Random, start: int,
                corpus: list[str]) -> list[dict]:
    rows = []
    for lang in S.LANGS:
        pool = [S.name_of(c, lang) for c in pool_conds]
        for c in conds:
            names = [c.en, c.zh, c.key.replace("_", " ")]
            text = _mask(S.field(c, "symptoms", lang), names, MASK[lang])
            rows.append(_row("condition", lang, text, S.name_of(c, lang), pool, rng, start + len(rows),
                             _gold(corpus, S.field(c, "symptoms", lang))))
    return rows


def _drugs(drugs: list[S.Drug], rng: random.Random, start: int, corpus: list[str]) -> list[dict]:
    rows = []
    for lang in S.LANGS:
        pool = [S.drug_name(d, lang) for d in S.DRUGS]
        for d in drugs:
            names = [d.en, d.zh, d.key, d.en.split(" (")[0]]
            text = _mask(S.drug_use(d, lang), names, DRUG_MASK[lang])
            rows.append(_row("drug", lang, text, S.drug_name(d, lang), pool, rng, start + len(rows),
                             _gold(corpus, S.drug_paragraph(d, lang))))
    return rows


def _labs(labs: list[S.LabTest], rng: random.Random, start: int, corpus: list[str]) -> list[dict]:
    rows = []
    for lang in S.LANGS:
        pool = [S.lab_name(lab, lang) for lab in S.LABS]
        for lab in labs:
            names = [lab.key, lab.zh]
            text = _mask(S.field(lab, "high", lang), names, "this value" if lang == "en" else "该指标")
            rows.append(_row("lab", lang, text, S.lab_name(lab, lang), pool, rng, start + len(rows),
                             _gold(corpus, S.lab_paragraph(lab, lang))))
    return rows


def build(rng: random.Random) -> tuple[list[dict], list[dict]]:
    train_conds, held = S.train_conditions(), S.held_out_conditions()
    drugs, labs = list(S.DRUGS), list(S.LABS)
    val_drugs, val_labs = drugs[:3], labs[:3]
    corpus = S.build_corpus(S.rng_for("corpus"))  # exactly sample/medical_corpus.txt (tested)
    train = _conditions(train_conds, train_conds, rng, 0, corpus)
    train += _drugs(drugs[3:], rng, len(train), corpus)
    train += _labs(labs[3:], rng, len(train), corpus)
    val = _conditions(held, S.CONDITIONS, rng, 0, corpus)
    val += _drugs(val_drugs, rng, len(val), corpus)
    val += _labs(val_labs, rng, len(val), corpus)
    rng.shuffle(train)
    return train, val


def main(out_dir: Path = SAMPLE_DIR) -> dict[str, int]:
    train, val = build(random.Random(SEED))
    out = {}
    for name, rows in (("qa_mc_train.jsonl", train), ("qa_mc_val.jsonl", val)):
        S.write_jsonl(out_dir / name, rows)
        out[name] = len(rows)
        print(f"{name:24s} {len(rows):4d} rows")
    return out


if __name__ == "__main__":
    main()
