"""The inputs of `medlab.data.prepare`: local files (every type `medlab.data.readers` reads) and ``hf://NAME``
datasets loaded with ``datasets.load_dataset``.

``hf://NAME`` (``hf://NAME/CONFIG`` for a named configuration is not guessed: use ``prepare.hf_config``) loads the
``prepare.hf_split`` split (default ``train``) of a hub dataset, a local dataset script or a local data directory
(``hf:///abs/path`` or ``hf://./rel/path``: whatever ``load_dataset`` accepts as a path). Without a network a hub name
fails with one message that says so and what to do instead (download elsewhere, ``save_to_disk``, pass the
directory) rather than a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medlab.data.errors import DataError
from medlab.data.readers import FileRecords, read_located

HF_PREFIX = "hf://"


def input_list(path: Any) -> list[str]:
    """``prepare.path`` as a list of strings (one path, or a list of them; ``hf://`` names kept as they are)."""
    if isinstance(path, (str, Path)):
        return [str(path)]
    if isinstance(path, Iterable):
        return [str(p) for p in path]
    return [str(path)]


def is_hub(path: str) -> bool:
    return str(path).startswith(HF_PREFIX)


def missing(path: str) -> bool:
    """A local input that does not exist (``hf://`` inputs are checked when they are loaded)."""
    return not is_hub(path) and not Path(path).exists()


def load_hub(path: str, split: str = "train", config: str | None = None) -> FileRecords:
    """``hf://NAME`` -> the records of one split, via ``datasets.load_dataset`` (clear errors, no traceback)."""
    import datasets

    name = str(path)[len(HF_PREFIX):]
    if not name:
        raise DataError(f"prepare.path={path!r}: give a dataset name or path after hf://")
    try:
        loaded = datasets.load_dataset(name, config, split=split)
    except (ConnectionError, OSError, TimeoutError) as err:  # requests' errors are OSErrors too
        offline = _offline(err)
        raise DataError(
            f"prepare.path={path}: could not load the dataset {name!r} with datasets.load_dataset"
            f"{' (no network: the Hugging Face hub cannot be reached)' if offline else ''}: "
            f"{type(err).__name__}: {_first_line(err)}. Offline: load it where a network exists, "
            f"`datasets.load_dataset({name!r}).save_to_disk(DIR)`, and pass prepare.path=DIR") from None
    except ValueError as err:  # an unknown split / config
        raise DataError(f"prepare.path={path}: {_first_line(err)} (prepare.hf_split={split!r}, "
                        f"prepare.hf_config={config!r})") from None
    if isinstance(loaded, datasets.DatasetDict):  # split=None is not passed, but a script may still return one
        raise DataError(f"prepare.path={path}: load_dataset returned several splits; set prepare.hf_split")
    if len(loaded) == 0:
        raise DataError(f"prepare.path={path}: the split {split!r} has no records")
    return FileRecords(Path(name), loaded)


def read_input(path: str, split: str = "train", config: str | None = None) -> FileRecords:
    """One input's records (and its unparsable lines, for local files)."""
    if is_hub(path):
        return load_hub(path, split, config)
    return read_located(Path(path))


def _offline(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(k in text for k in ("connection", "offline", "resolve", "network", "max retries", "timed out",
                                   "couldn't reach", "could not reach", "name or service"))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
