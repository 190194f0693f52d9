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
    if not SHARED_DATA.exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _medlab_cache(tmp_path_factory):
    """One cache dir (tiny models, tokenized data) for the whole session, never the user's."""
    cache = tmp_path_factory.mktemp("medlab_cache")
    os.environ["MEDLAB_CACHE_DIR"] = str(cache)
    yield cache
