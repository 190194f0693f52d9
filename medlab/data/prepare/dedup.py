"""Duplicate detection for `medlab.data.prepare`: exact keys, MinHash LSH near-duplicates, clusters.

- `exact_key(text)`: a hash of the text lower-cased with whitespace and punctuation removed (normalized text);
- `shingles(text)`: word 5-grams for Latin text, character 3-grams (whitespace dropped) for CJK text, chosen per
  text by its script (`medlab.data.prepare.clean.cjk_ratio` >= 0.3 -> CJK);
- `NearDuplicates`: MinHash signatures (datasketch, ``num_perm``) in an LSH index; each new text is compared with
  the candidates LSH returns, and joins the cluster of every candidate whose estimated Jaccard similarity is
  >= ``threshold - margin`` (the LSH bands are tuned towards recall; the estimate check keeps unrelated texts
  apart). Clusters are union-find sets over row ids; the first row of a cluster is its representative.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

from medlab.data.prepare.clean import cjk_ratio

WORD_N = 5
CHAR_N = 3
CJK_SHINGLE_RATIO = 0.3
_WORD = re.compile(r"\w+", re.UNICODE)


def normalized(text: str) -> str:
    """Lower case, NFKC, only letters and digits kept (the text exact dedup compares)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if ch.isalnum())


def exact_key(text: str) -> bytes:
    return hashlib.blake2b(normalized(text).encode("utf-8"), digest_size=16).digest()


def shingles(text: str) -> set[str]:
    """Word 5-grams (Latin) or character 3-grams (CJK, whitespace removed); a short text is one shingle."""
    text = unicodedata.normalize("NFKC", text).lower()
    if cjk_ratio(text) >= CJK_SHINGLE_RATIO:
        chars = "".join(ch for ch in text if not ch.isspace())
        n = CHAR_N
        return {chars[i:i + n] for i in range(len(chars) - n + 1)} or ({chars} if chars else set())
    words = _WORD.findall(text)
    n = WORD_N
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)} or ({" ".join(words)} if words else set())


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class UnionFind:
    """Union-find over integer ids; the root of a set is its smallest id (the first row)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo
            return lo
        return ra


class NearDuplicates:
    """Incremental MinHash LSH near-duplicate clustering (see the module docstring)."""

    def __init__(self, num_perm: int = 128, threshold: float = 0.8, margin: float = 0.05, seed: int = 1,
                 uf: UnionFind | None = None) -> None:
        from datasketch import MinHash, MinHashLSH

        self._minhash = MinHash
        self.num_perm, self.threshold, self.seed = int(num_perm), float(threshold), int(seed)
        self.accept = max(0.0, self.threshold - float(margin))
        # bands tuned for recall at the threshold (false negatives weigh 4x false positives)
        self.lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm, weights=(0.2, 0.8))
        self.signatures: dict[int, np.ndarray] = {}
        self.uf = uf if uf is not None else UnionFind()
        self._template = MinHash(num_perm=self.num_perm, seed=self.seed)
        scheme = getattr(self._template, "scheme", None)  # datasketch >= 2 asks for it with shared permutations
        self._scheme = {"scheme": scheme} if scheme is not None else {}

    def signature(self, text: str):
        m = self._minhash(num_perm=self.num_perm, seed=self.seed, permutations=self._template.permutations,
                          **self._scheme)
        grams = shingles(text)
        if grams:
            m.update_batch([g.encode("utf-8") for g in grams])
        return m

    def add(self, row_id: int, text: str) -> list[int]:
        """Index row `row_id`; returns the earlier rows it was found to duplicate (joined to its cluster)."""
        m = self.signature(text)
        matches = []
        for other in self.lsh.query(m):
            other_sig = self.signatures[other]
            if float(np.count_nonzero(other_sig == m.hashvalues)) / self.num_perm >= self.accept:
                matches.append(other)
                self.uf.union(row_id, other)
        self.lsh.insert(row_id, m, check_duplication=False)
        self.signatures[row_id] = m.hashvalues
        return matches
