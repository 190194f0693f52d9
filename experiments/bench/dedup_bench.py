"""Near-dedup benchmark (not a test): documents/s of medlab.data.prepare's MinHash LSH over the ../shared/data
corpora concatenated and replicated (with small random edits, so replicas are near-, not exact, duplicates) to
>= 100k documents, and recall / precision against brute-force all-pairs Jaccard on the same shingles for a sample.

    OMP_NUM_THREADS=1 python experiments/bench/dedup_bench.py [--docs 100000] [--sample 5000] [--threshold 0.8]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import time
from itertools import combinations

from medlab.data.prepare.dedup import NearDuplicates, jaccard, shingles
from medlab.paths import ROOT_DIR

DATA = ROOT_DIR.parent / "shared" / "data"
FIELDS = ("text", "output", "answer", "question", "value", "dialogue", "section_text")


def corpus() -> list[str]:
    docs = []
    for path in sorted(DATA.rglob("*")):
        if path.suffix == ".txt":
            docs += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                text = " ".join(str(row[f]) for f in FIELDS if isinstance(row.get(f), str))
                if text.strip():
                    docs.append(text)
    return docs


def edited(text: str, rng: random.Random) -> str:
    """A near copy: one to three words (or characters, for CJK) replaced or dropped."""
    tokens = text.split() if " " in text else list(text)
    for _ in range(rng.randint(1, 3)):
        if len(tokens) > 3:
            i = rng.randrange(len(tokens))
            tokens[i] = tokens[rng.randrange(len(tokens))] if rng.random() < 0.5 else ""
    return (" " if " " in text else "").join(t for t in tokens if t)


def replicate(base: list[str], n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = list(base)
    while len(docs) < n:
        docs.append(edited(rng.choice(base), rng))
    return docs[:n]


def run(docs: list[str], num_perm: int, threshold: float) -> tuple[NearDuplicates, float, int]:
    index = NearDuplicates(num_perm=num_perm, threshold=threshold)
    t0 = time.perf_counter()
    dups = sum(bool(index.add(i, d)) for i, d in enumerate(docs))
    return index, time.perf_counter() - t0, dups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=5000)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=0.8)
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found (see ../shared/data/README.md)")
    base = corpus()
    docs = replicate(base, args.docs)
    _, seconds, dups = run(docs, args.num_perm, args.threshold)
    sample = replicate(random.Random(1).sample(base, min(len(base), args.sample // 2)), args.sample, seed=1)
    index, _, _ = run(sample, args.num_perm, args.threshold)
    grams = [shingles(d) for d in sample]
    t0 = time.perf_counter()
    true = [(i, j) for i, j in combinations(range(len(sample)), 2) if jaccard(grams[i], grams[j]) >= args.threshold]
    brute = time.perf_counter() - t0
    found = sum(index.uf.find(i) == index.uf.find(j) for i, j in true)
    roots = {}
    for i in range(len(sample)):
        roots.setdefault(index.uf.find(i), []).append(i)
    low = sum(jaccard(grams[r], grams[i]) < 0.5 for r, members in roots.items() for i in members if i != r)
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except StopIteration:
        cpu = platform.processor()
    print(f"machine: {cpu}, OMP_NUM_THREADS=1, num_perm={args.num_perm}, threshold={args.threshold}")
    print("| measure | value |\n|---|---|")
    print(f"| base documents (../shared/data) | {len(base)} |")
    print(f"| documents indexed | {len(docs)} |")
    print(f"| near-dedup seconds | {seconds:.1f} |")
    print(f"| documents/s | {len(docs) / seconds:.0f} |")
    print(f"| rows found duplicate | {dups} |")
    print(f"| sample | {len(sample)} docs, {len(true)} pairs with Jaccard >= {args.threshold} "
          f"(brute force {brute:.0f} s) |")
    print(f"| recall (pairs clustered together) | {found / max(len(true), 1):.3f} |")
    print(f"| cluster members with Jaccard < 0.5 to their representative | {low} |")


if __name__ == "__main__":
    main()
