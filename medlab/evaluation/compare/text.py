"""zh-aware text helpers for the dimension scores: tokens, content terms, sentences, language.

- :func:`tokens`: lower-cased words (Latin letters / digits, inner ``'`` ``-`` ``.`` kept: ``don't``, ``covid-19``,
  ``2.5``) and every CJK character as its own token (Chinese is not segmented: characters are the unit, as the
  CMMLU / C-Eval style character F1 does). Punctuation is dropped.
- :func:`content_terms`: the set of terms that carry content: Latin words that are not stop words and have at
  least 2 characters, numbers, and CJK character bigrams inside each run of CJK characters (a single CJK
  character is too ambiguous to count as coverage; a one-character run counts as itself).
- :func:`sentences`: split after ``. ! ?`` (followed by a space or the end), ``。！？；`` and newlines.
- :func:`is_cjk_text`: most letters are CJK.
"""

from __future__ import annotations

import re

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{CJK}]|[0-9a-z]+(?:['\-.][0-9a-z]+)*", re.IGNORECASE)
_CJK_RUN = re.compile(rf"[{CJK}]+")
_LATIN = re.compile(r"[0-9a-z]+(?:['\-.][0-9a-z]+)*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？；!?])|\n+")
_CJK_CHAR = re.compile(rf"[{CJK}]")
_LETTER = re.compile(rf"[A-Za-z{CJK}]")

STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers him his
how i if in into is it its itself just me more most my no nor not now of off on once only or other our out over own
same she should so some such than that the their them then there these they this those through to too under until
up very was we were what when where which while who whom why will with would you your yours also may might must
shall usually often typically used use patient patients
""".split())


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens; each CJK character is a token (see the module doc)."""
    return [t.lower() for t in _TOKEN.findall(text or "")]


def content_terms(text: str) -> set[str]:
    """Content-bearing terms of ``text``: non-stop-word Latin words (>= 2 chars) and numbers, CJK bigrams."""
    text = text or ""
    terms = {w.lower() for w in _LATIN.findall(text)
             if (len(w) >= 2 or w.isdigit()) and w.lower() not in STOP_WORDS}
    for run in _CJK_RUN.findall(text):
        terms.update({run} if len(run) == 1 else {run[i:i + 2] for i in range(len(run) - 1)})
    return terms


def sentences(text: str) -> list[str]:
    """The non-empty sentences of ``text`` (en and zh sentence ends, newlines)."""
    return [s.strip() for s in _SENTENCE_END.split(text or "") if s and s.strip()]


def is_cjk_text(text: str) -> bool:
    """True when at least half of the letters of ``text`` are CJK characters."""
    letters = _LETTER.findall(text or "")
    return bool(letters) and len(_CJK_CHAR.findall(text)) * 2 >= len(letters)
