import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SHARED_DATA = Path(os.environ.get("MEDLAB_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Tests never touch the network or the user's caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (../shared/data): optional, so the tests that need it skip without it."""
    if not SHARED_DATA.exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _medlab_cache(tmp_path_factory):
    """One cache dir (tiny models, tokenized data) for the whole session, never the user's."""
    cache = tmp_path_factory.mktemp("medlab_cache")
    os.environ["MEDLAB_CACHE_DIR"] = str(cache)
    yield cache


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a whole test module: tiny models gain nothing from more, and spinning
    threads stall on a busy shared CPU (several times slower on 2 cores). A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``; the previous setting is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    """The tokenizer the project ships (medlab/assets/tokenizer), loaded once per module (a test module may change
    it). A committed asset: a missing one fails, never skips."""
    from transformers import AutoTokenizer

    from helpers import TOKENIZER_DIR

    assert (TOKENIZER_DIR / "tokenizer.json").is_file(), f"the shipped tokenizer {TOKENIZER_DIR} is missing"
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def tok(tokenizer):
    """Short name of ``tokenizer``."""
    return tokenizer
