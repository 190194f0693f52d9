"""Tokenize once: a content-addressed cache of tokenized datasets under `cache_dir/tokenized/<key>/`.

The key hashes everything that changes the tokens: each data file's path, size and mtime, every data
argument that affects tokenization, the tokenizer (its full serialized vocab/merges/normalizer, special
tokens and chat template) and the chat template's source. Change any of them and a new entry is built;
nothing is ever invalidated in place. Entries are written to a temp dir and renamed into place, so a
killed run or two ranks tokenizing at once never leave a half-written entry that a later run would load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import datasets

CACHE_VERSION = 1  # bump when tokenization logic changes the tokens produced for the same inputs
COUNTS_FILE = "counts.json"


def file_fingerprint(paths: Iterable[Path]) -> list[list]:
    """[[absolute path, size, mtime_ns], ...] for files; a saved-dataset directory hashes its files."""
    out = []
    for path in paths:
        path = Path(path).resolve()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        out += [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return out


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything in the tokenizer that changes token ids or rendered text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = {
        "class": type(tokenizer).__name__,
        "backend": backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": tokenizer.chat_template
        if isinstance(tokenizer.chat_template, (str, type(None)))
        else json.dumps(tokenizer.chat_template, sort_keys=True),
        "eos_pad": [tokenizer.eos_token_id, tokenizer.pad_token_id],
    }
    return _sha(parts)


def cache_key(parts: dict) -> str:
    """Short stable hash of a JSON-serializable dict."""
    return _sha({"version": CACHE_VERSION, **parts})[:20]


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def load_entry(entry: Path) -> tuple[datasets.Dataset, datasets.Dataset | None, dict] | None:
    """(train, val or None, counts) from a complete cache entry, or None if there is none."""
    if not (entry / COUNTS_FILE).exists():
        return None
    counts = json.loads((entry / COUNTS_FILE).read_text())
    train = datasets.load_from_disk(str(entry / "train"))
    val = datasets.load_from_disk(str(entry / "val")) if (entry / "val").exists() else None
    return train, val, counts


def save_entry(entry: Path, train: datasets.Dataset, val: datasets.Dataset | None, counts: dict) -> None:
    """Write an entry atomically (temp dir, counts written last, then rename); a concurrent writer's entry wins."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".tmp-{entry.name}-{uuid.uuid4().hex[:8]}"
    try:
        train.save_to_disk(str(tmp / "train"))
        if val is not None:
            val.save_to_disk(str(tmp / "val"))
        (tmp / COUNTS_FILE).write_text(json.dumps(counts, indent=1, sort_keys=True))
        os.rename(tmp, entry)
    except OSError:
        if not (entry / COUNTS_FILE).exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_or_build(
    entry: Path | None, build: Callable[[], tuple[datasets.Dataset, datasets.Dataset | None, dict]]
) -> tuple[datasets.Dataset, datasets.Dataset | None, dict, bool]:
    """``(train, val, counts, from_cache)``: the complete entry if there is one, else ``build()`` (saved to
    `entry`; None = no cache)."""
    cached = load_entry(entry) if entry is not None else None
    if cached is not None:
        return (*cached, True)
    train, val, counts = build()
    if entry is not None:
        save_entry(entry, train, val, counts)
    return train, val, counts, False


def entry_path(cache_dir: str | Path, parts: dict) -> Path:
    """``cache_dir/tokenized/<key>`` for the parts that change the tokens (see `cache_key`)."""
    return Path(cache_dir) / "tokenized" / cache_key(parts)
