"""Write the sample preference data (``sample/preference_*.jsonl``, ``sample/kto_*.jsonl``) for the reward model,
DPO, ORPO and KTO.

Built only from medlab's own hand-written fact tables (``make_sample_data.py``); deterministic (fixed seed)::

    python -m medlab.assets.make_preference_samples

Each prompt is a patient question about a condition (English or Chinese). The preferred answer is the table's
accurate answer; the dispreferred one has a flaw a medical reviewer would reject, one of:

- ``unsafe``: dismisses the problem or gives unsafe advice (no need for a doctor, leftover antibiotics, stopping
  prescribed medicine);
- ``off_topic``: an accurate answer about another condition;
- ``vague``: a non-answer.

Files (the canonical schema of ``python -m medlab.prepare prepare.task=preference``):

- ``preference_train.jsonl`` / ``preference_val.jsonl``: ``{"prompt", "chosen", "rejected", "margin", "flaw",
  "lang"}`` (+ ``system`` on some rows); ``margin`` is the annotator's preference strength (unsafe 2, off-topic 1,
  vague 0.5); validation asks about the conditions held out of every training file.
- ``kto_train.jsonl`` / ``kto_val.jsonl``: unpaired ``{"prompt", "completion", "label", "lang"}`` (label true =
  desirable), different questions than the pairs.

Synthetic, for tests and demos, not for clinical use.
"""

from __future__ import annotations

import random
from pathlib import Path

from medlab.assets import make_sample_data as S

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SEED = 13
QTYPES = ("symptoms", "causes", "diagnosis", "treatment", "prevention", "urgent")
MARGINS = {"unsafe": 2.0, "off_topic": 1.0, "vague": 0.5}

UNSAFE = {
    "en": ["{Name} is nothing to worry about and always settles by itself, so there is no need to see a doctor, even "
           "if the symptoms get worse.",
           "Just take any antibiotics you have left over at home; {name} does not need a doctor's visit or any tests.",
           "If you already have medicine for {name}, stop taking it as soon as you feel better and double the dose "
           "whenever symptoms come back.",
           "Tests for {name} are a waste of money. Search online, pick a treatment that sounds right and skip the "
           "doctor."],
    "zh": ["{name}不用担心，一定会自己好，即使症状加重也没必要去看医生。",
           "把家里剩下的抗生素吃了就行，{name}不需要看医生，也不用做检查。",
           "如果已经在用治疗{name}的药，感觉好一点就马上停药，症状再出现时把剂量加倍。",
           "{name}做检查就是浪费钱，自己上网查个偏方试试，不用去医院。"],
}
VAGUE = {
    "en": ["It depends. Everyone is different, so it is hard to say anything about {name}.",
           "There are many possibilities with {name}. You will have to find out yourself.",
           "{Name} is complicated and there is no simple answer."],
    "zh": ["这个因人而异，关于{name}很难说。", "{name}的情况有很多种，你自己看着办吧。", "{name}很复杂，没有简单的答案。"],
}
KTO_QUESTIONS = {"en": "I have a question about {name}: {question}", "zh": "想咨询一下{name}的问题：{question}"}


def _fill(template: str, c: S.Condition, lang: str) -> str:
    name = S.name_of(c, lang)
    return template.format(name=name, Name=S.cap(name))


def _rejected(c: S.Condition, qtype: str, lang: str, flaw: str, others: list[S.Condition], rng: random.Random) -> str:
    if flaw == "unsafe":
        return _fill(rng.choice(UNSAFE[lang]), c, lang)
    if flaw == "vague":
        return _fill(rng.choice(VAGUE[lang]), c, lang)
    other = rng.choice([o for o in others if o.key != c.key])
    return S.condition_answer(other, qtype, lang, rng)


def _pair(c: S.Condition, qtype: str, lang: str, flaw: str, others: list[S.Condition], rng: random.Random,
          table: dict) -> dict:
    row = {"prompt": S.condition_question(c, qtype, lang, rng, table),
           "chosen": S.condition_answer(c, qtype, lang, rng),
           "rejected": _rejected(c, qtype, lang, flaw, others, rng), "margin": MARGINS[flaw], "flaw": flaw,
           "lang": lang}
    if rng.random() < 0.25:
        row = {"system": rng.choice(S.SYSTEM_PROMPTS[lang]), **row}
    return row


def build_pairs(conditions: list[S.Condition], others: list[S.Condition], rng: random.Random, per_condition: int,
                table: dict) -> list[dict]:
    rows, flaws = [], ("unsafe", "off_topic", "vague", "unsafe")  # unsafe answers are the most common flaw
    for i, c in enumerate(conditions):
        for k in range(per_condition):
            lang = S.LANGS[(i + k) % 2]
            qtype = QTYPES[(i * per_condition + k) % len(QTYPES)]
            rows.append(_pair(c, qtype, lang, flaws[(i * per_condition + k) % len(flaws)], others, rng, table))
    rng.shuffle(rows)
    return rows


def build_unpaired(conditions: list[S.Condition], others: list[S.Condition], rng: random.Random) -> list[dict]:
    rows = []
    for i, c in enumerate(conditions):
        lang, qtype = S.LANGS[i % 2], QTYPES[(i + 3) % len(QTYPES)]
        question = S.condition_question(c, qtype, lang, rng, S.VAL_QUESTIONS if i % 3 == 0 else S.QUESTIONS)
        prompt = KTO_QUESTIONS[lang].format(name=S.name_of(c, lang), question=question) if i % 4 == 0 else question
        desirable = i % 2 == 0 if i % 5 else i % 2 == 1  # about half each, not in lockstep with the language
        completion = (S.condition_answer(c, qtype, lang, rng) if desirable else
                      _rejected(c, qtype, lang, ("unsafe", "off_topic", "vague")[i % 3], others, rng))
        rows.append({"prompt": prompt, "completion": completion, "label": desirable, "lang": lang})
    rng.shuffle(rows)
    return rows


def main(out_dir: Path = SAMPLE_DIR) -> dict[str, int]:
    train, held = S.train_conditions(), S.held_out_conditions()
    outputs = {
        "preference_train.jsonl": build_pairs(train[:40], train, random.Random(f"{SEED}:pairs"), 2, S.QUESTIONS),
        "preference_val.jsonl": build_pairs(held, train, random.Random(f"{SEED}:val_pairs"), 2, S.VAL_QUESTIONS),
        "kto_train.jsonl": build_unpaired(train * 2, train, random.Random(f"{SEED}:kto")),
        "kto_val.jsonl": build_unpaired(held * 2, train, random.Random(f"{SEED}:val_kto")),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in outputs.items():
        S.write_jsonl(out_dir / name, rows)
    return {name: len(rows) for name, rows in outputs.items()}


if __name__ == "__main__":
    for file, n in main().items():
        print(f"{file}: {n} rows")
