"""Per-answer dimension scores, each a small pure function returning a number in [0, 1] (higher is better).

- :func:`accuracy`: multiple-choice questions (``options`` given): 1 when the option letter extracted from the
  answer (:func:`extract_choice`) is the reference letter, else 0. Open questions: exact match (after
  normalization: lower case, punctuation and spaces removed) gives 1, otherwise the token F1 of answer vs
  reference (SQuAD-style, over :func:`medlab.evaluation.compare.text.tokens`: words, and CJK characters one by
  one).
- :func:`completeness`: the share of the reference's content terms (:func:`~.text.content_terms`: non-stop
  words and numbers, CJK character bigrams) that the answer contains (recall of key content). A
  multiple-choice reference is its letter + option text, so naming the right option counts.
- :func:`relevance`: cosine similarity of the question's and the answer's embeddings (a bi-encoder's), mapped
  from [-1, 1] to [0, 1]; an empty answer scores 0.
- :func:`readability`: 1 when the mean sentence length is in a comfortable band (en: 8-25 words; zh: 15-50
  characters), falling linearly to 0 at half the lower bound / twice the upper bound; multiplied by the share of
  distinct sentences (repetition, a common failure of small models, lowers it) and 0 for an empty answer.
  :func:`readability_stats` gives the raw numbers (characters, tokens, sentences, mean sentence length).
- safety: :mod:`medlab.evaluation.compare.safety`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

from medlab.evaluation.compare.text import content_terms, is_cjk_text, sentences, tokens

DIMENSIONS = ("accuracy", "completeness", "relevance", "readability", "safety")
READABLE_WORDS = (8.0, 25.0)    # en: words per sentence
READABLE_CHARS = (15.0, 50.0)   # zh: characters per sentence
_PUNCT = re.compile(rf"[{re.escape(string.punctuation)}\s，。！？；：、“”‘’（）《》【】…—·]+")
_CHOICE_PATTERNS = (
    re.compile(r"(?i:<answer>)\s*\(?([A-J])\)?\s*(?i:</answer>)"),
    re.compile(r"(?i:answer|option|choice)\s*(?i:is|:)?\s*\(?\**([A-J])\b\)?"),
    re.compile(r"(?:答案|选项|选)\s*(?:是|为|：|:)?\s*\(?([A-J])\b"),
    re.compile(r"^\s*\(?\**([A-J])\**\)?(?:[.):：、]|$)"),
    re.compile(r"\b([A-J])(?:[.):]|$)"),
)


def normalize(text: str) -> str:
    """Lower case, punctuation (ASCII and CJK) and whitespace removed: the exact-match form."""
    return _PUNCT.sub("", (text or "").lower())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 of the token multisets (:func:`~.text.tokens`); 1 when both are empty, 0 when one is."""
    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return float(not p and not r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def extract_choice(answer: str, letters: Sequence[str] = tuple("ABCDEFGHIJ"),
                   options: Mapping[str, str] | None = None) -> str | None:
    """The option letter an answer picks: ``<answer>X</answer>``, "the answer is X", "答案是X", a leading
    "X." / "(X)", else the first capital letter among ``letters`` standing alone before ". ) :" or at the end;
    failing those, the only option whose text the answer contains. None when nothing is found."""
    allowed = set(letters)
    for pattern in _CHOICE_PATTERNS:
        for m in pattern.finditer(answer or ""):
            if m.group(1).upper() in allowed:
                return m.group(1).upper()
    if options:
        norm = normalize(answer)
        hits = [k for k, v in options.items() if normalize(v) and normalize(v) in norm]
        if len(hits) == 1:
            return hits[0]
    return None


def accuracy(answer: str, reference: str, *, options: Mapping[str, str] | None = None,
             answer_letter: str | None = None) -> float:
    """1/0 letter match for a multiple-choice question; else 1 for an exact match, otherwise token F1."""
    if options and answer_letter:
        return float(extract_choice(answer, tuple(options), options) == answer_letter)
    if normalize(answer) and normalize(answer) == normalize(reference):
        return 1.0
    return token_f1(answer, reference)


def completeness(answer: str, reference: str) -> float:
    """Share of the reference's content terms found in the answer's content terms (1 when it has none)."""
    ref = content_terms(reference)
    if not ref:
        return 1.0
    return len(ref & content_terms(answer)) / len(ref)


def relevance(cosine: float, answer: str) -> float:
    """A question/answer embedding cosine mapped to [0, 1]; 0 for an empty answer."""
    if not (answer or "").strip():
        return 0.0
    return min(1.0, max(0.0, (float(cosine) + 1.0) / 2.0))


def readability_stats(answer: str) -> dict[str, float]:
    """``chars, tokens, sentences, mean_sentence_length`` (words, or characters for a mostly-CJK answer),
    ``distinct_sentence_ratio`` and ``zh`` (1.0 when mostly CJK)."""
    sents = sentences(answer)
    zh = is_cjk_text(answer)
    unit = (lambda s: len(re.sub(r"\s", "", s))) if zh else (lambda s: len(tokens(s)))
    lengths = [unit(s) for s in sents]
    mean = sum(lengths) / len(lengths) if lengths else 0.0
    distinct = len({normalize(s) for s in sents}) / len(sents) if sents else 0.0
    return {"chars": float(len(answer or "")), "tokens": float(len(tokens(answer))), "sentences": float(len(sents)),
            "mean_sentence_length": mean, "distinct_sentence_ratio": distinct, "zh": float(zh)}


def band_score(value: float, low: float, high: float) -> float:
    """1 inside [low, high]; linear to 0 at low/2 below and at 2*high above."""
    if low <= value <= high:
        return 1.0
    if value < low:
        return max(0.0, (value - low / 2) / (low / 2))
    return max(0.0, (2 * high - value) / high)


def readability(answer: str) -> float:
    """Sentence-length band score x distinct-sentence share (see the module doc); 0 for an empty answer."""
    stats = readability_stats(answer)
    if stats["sentences"] == 0:
        return 0.0
    low, high = READABLE_CHARS if stats["zh"] else READABLE_WORDS
    return band_score(stats["mean_sentence_length"], low, high) * stats["distinct_sentence_ratio"]
