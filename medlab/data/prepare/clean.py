"""Text cleaning for `medlab.data.prepare`: pure functions on one string (no I/O, no state).

- `nfkc`: Unicode NFKC + control / zero-width characters removed (newline and tab kept); in a text with CJK
  characters the full-width punctuation Chinese is written with (，：；！？（） ... and the ellipsis …) is kept
  (plain NFKC would turn it into ASCII; ``keep_fullwidth_cjk=False`` does). Full-width letters and digits (ＡＢ１２)
  always become ASCII, and 。、「」《》【】“” are not touched by NFKC anyway;
- `strip_markup`: HTML tags, comments, script/style blocks and entities (``&amp;`` -> ``&``);
- `squeeze_whitespace`: runs of spaces/tabs -> one space, lines stripped, 3+ newlines -> 2;
- `script_counts` / `language_of`: CJK vs Latin letters (the ``language`` step keeps rows by script ratio);
- `mask_pii`: phone numbers (Chinese mobile ``1[3-9]\\d{9}``, landlines, US style), e-mails, Chinese national ID
  numbers (18 characters with a valid checksum), medical record numbers (``MRN: 1234567``, ``病历号：123``,
  ``住院号``), dates of birth next to DOB / date of birth / born / 出生 -> ``[PHONE]``, ``[EMAIL]``, ``[ID]``,
  ``[MRN]``, ``[DOB]``; returns the counts per kind, never the values.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter

_KEEP_CONTROL = {"\n", "\t"}
_ZERO_WIDTH = {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"}


# the full-width punctuation NFKC maps to ASCII (U+FF01-FF5E minus letters and digits), and the ellipsis
FULLWIDTH_PUNCT = frozenset(chr(c) for c in range(0xFF01, 0xFF5F) if not chr(c).isalnum()) | {"\u2026"}
_FULLWIDTH_RUN = re.compile("([" + re.escape("".join(sorted(FULLWIDTH_PUNCT))) + "])")


def _nfkc_keeping(text: str, keep: frozenset) -> str:
    """NFKC of everything but the characters in `keep` (they separate the pieces that are normalized)."""
    parts = _FULLWIDTH_RUN.split(text)
    return "".join(p if p in keep else unicodedata.normalize("NFKC", p) for p in parts)


def nfkc(text: str, keep_fullwidth_cjk: bool = True) -> str:
    """NFKC, then control characters (category Cc except newline/tab; ``\\r`` -> newline) and zero-width ones out.
    ``keep_fullwidth_cjk``: a text with CJK characters keeps its full-width punctuation (`FULLWIDTH_PUNCT`)."""
    if keep_fullwidth_cjk and any(_is_cjk(ch) for ch in text):
        text = _nfkc_keeping(text, FULLWIDTH_PUNCT)
    else:
        text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch for ch in text if ch in _KEEP_CONTROL or not (
        unicodedata.category(ch) == "Cc" or ch in _ZERO_WIDTH))


_BLOCKS = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.I | re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_BREAK = re.compile(r"<\s*(br|/p|/div|/li|/tr|/h[1-6])\b[^>]*>", re.I)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(\s[^<>]*)?/?>")


def strip_markup(text: str) -> str:
    """HTML residue out: script/style blocks, comments, tags (line-ending tags -> newline), entities decoded."""
    if "<" not in text and "&" not in text:
        return text
    text = _BLOCKS.sub(" ", text)
    text = _COMMENT.sub(" ", text)
    text = _BREAK.sub("\n", text)
    text = _TAG.sub("", text)  # inline tags: nothing (block ends became newlines above)
    return html.unescape(html.unescape(text)).replace("\xa0", " ")


_SPACES = re.compile(r"[ \t\u3000\xa0]+")
_NEWLINES = re.compile(r"\n{3,}")


def squeeze_whitespace(text: str) -> str:
    """Runs of spaces/tabs -> one space, each line stripped, 3+ newlines -> 2, the ends stripped."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _NEWLINES.sub("\n\n", "\n".join(lines)).strip()


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2A6DF or 0xF900 <= o <= 0xFAFF
            or 0x3040 <= o <= 0x30FF or 0xAC00 <= o <= 0xD7AF)


def script_counts(text: str) -> tuple[int, int]:
    """(CJK characters, Latin letters) of `text`."""
    cjk = latin = 0
    for ch in text:
        if _is_cjk(ch):
            cjk += 1
        elif ch.isascii() and ch.isalpha() or ("\u00c0" <= ch <= "\u024f" and ch.isalpha()):
            latin += 1
    return cjk, latin


def cjk_ratio(text: str) -> float:
    """CJK characters / (CJK + Latin letters); 0.0 with neither."""
    cjk, latin = script_counts(text)
    return cjk / (cjk + latin) if cjk + latin else 0.0


def language_of(text: str, threshold: float = 0.5) -> str | None:
    """``zh`` when the CJK share of the letters is >= threshold, ``en`` when the Latin share is, else None
    (no letters, or mixed below the threshold both ways)."""
    cjk, latin = script_counts(text)
    if not cjk + latin:
        return None
    if cjk / (cjk + latin) >= threshold:
        return "zh"
    if latin / (cjk + latin) >= threshold:
        return "en"
    return None


# --------------------------------------------------------------------------------------------------- PII

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def valid_cn_id(number: str) -> bool:
    """Whether an 18-character Chinese national ID number has the right check character."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == number[17].upper()


_DATE = (r"(?:\d{4}\s*[-/.年]\s*\d{1,2}\s*[-/.月]\s*\d{1,2}\s*日?|\d{4}年\d{1,2}月|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}"
         r"|(?:\d{1,2}\s+)?(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?"
         r",?\s+\d{4}|\d{1,2}\s+(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?\s+\d{4})")
_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("EMAIL", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")),
    ("MRN", re.compile(r"(?i)(?P<pre>\b(?:MRN|medical\s+record\s+(?:number|no\.?|#))\s*[:#：]?\s*)(?P<v>[A-Z]{0,3}\d{6,})"
                       r"|(?P<pre2>(?:病历号|病案号|住院号|门诊号)\s*[:：#]?\s*)(?P<v2>[A-Za-z]{0,3}\d+)")),
    ("DOB", re.compile(r"(?i)(?P<pre>\b(?:DOB|D\.O\.B\.?|date\s+of\s+birth|birth\s*date|born(?:\s+on)?)\s*[:：]?\s*)"
                       rf"(?P<v>{_DATE})|(?P<pre2>出生(?:日期|于|年月日)?\s*[:：]?\s*)(?P<v2>{_DATE})")),
    ("ID", re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")),
    ("PHONE", re.compile(r"(?<![\d+])(?:\+?86[- ]?)?1[3-9]\d(?:\d{8}|[- ]\d{4}[- ]\d{4})(?!\d)"
                         r"|(?<!\d)0\d{2,3}-\d{7,8}(?!\d)"
                         r"|(?<![\w+])(?:\+?1[ .-]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?!\d)")),
)
PII_KINDS = tuple(kind for kind, _ in _PATTERNS)


def mask_pii(text: str) -> tuple[str, Counter]:
    """`text` with personal data replaced by ``[KIND]`` placeholders, and how many of each kind were masked."""
    counts: Counter = Counter()
    for kind, pattern in _PATTERNS:
        if kind == "ID":
            def repl(m: re.Match, kind=kind) -> str:
                if not valid_cn_id(m.group(0)):
                    return m.group(0)
                counts[kind] += 1
                return f"[{kind}]"
        elif kind in ("MRN", "DOB"):
            def repl(m: re.Match, kind=kind) -> str:
                counts[kind] += 1
                pre = m.group("pre") if m.group("pre") is not None else m.group("pre2")
                return f"{pre}[{kind}]"
        else:
            def repl(m: re.Match, kind=kind) -> str:
                counts[kind] += 1
                return f"[{kind}]"
        text = pattern.sub(repl, text)
    return text, counts
