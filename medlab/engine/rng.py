"""Capture and restore every global random number generator a training step can draw from.

Exact resume needs the same dropout masks and the same sampled rollouts after a restart, so each rank
saves its own RNG state next to the checkpoint (``rng-rank{R}.pt``). The state is stored as plain tensors
only, so the file loads with ``torch.load(weights_only=True)`` and cannot carry code.

Layout of the dict (all values are ``torch.Tensor``):

- ``python``: int64 ``[625]`` -- the Mersenne Twister words and position of :mod:`random`;
  ``python_version``: int64 scalar; ``python_gauss``: float64 ``[2]`` = (has cached gaussian, value).
- ``numpy``: int64 ``[624]`` -- the legacy global MT19937 keys; ``numpy_meta``: float64 ``[3]`` =
  (pos, has_gauss, cached_gaussian).
- ``torch``: uint8 -- :func:`torch.get_rng_state`.
- ``torch_cuda``: uint8 ``[num_devices, state_size]`` -- one row per visible CUDA device; present only
  when CUDA has been initialised (an uninitialised CUDA RNG has never been drawn from, so there is
  nothing to restore, and touching it would create a CUDA context on a CPU-only run).
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def capture_rng() -> dict[str, torch.Tensor]:
    """Return the state of python ``random``, numpy's global RNG, torch CPU and (if used) CUDA RNGs."""
    py_version, py_words, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        "python": torch.tensor(py_words, dtype=torch.int64),
        "python_version": torch.tensor(py_version, dtype=torch.int64),
        "python_gauss": torch.tensor(
            [py_gauss is not None, 0.0 if py_gauss is None else py_gauss], dtype=torch.float64
        ),
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_meta": torch.tensor([np_pos, np_has_gauss, np_gauss], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: dict[str, torch.Tensor]) -> None:
    """Set every generator captured by :func:`capture_rng` back to the recorded state."""
    has_gauss, gauss = state["python_gauss"].tolist()
    random.setstate(
        (
            int(state["python_version"]),
            tuple(int(w) for w in state["python"].tolist()),
            gauss if has_gauss else None,
        )
    )
    pos, np_has_gauss, np_gauss = state["numpy_meta"].tolist()
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(np_has_gauss), float(np_gauss))
    )
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    if "torch_cuda" in state:
        _restore_cuda(state["torch_cuda"])


def _restore_cuda(saved: torch.Tensor) -> None:
    if not torch.cuda.is_available():
        log.warning("The checkpoint holds CUDA RNG states but CUDA is not available: not restored.")
        return
    count = torch.cuda.device_count()
    if count != saved.shape[0]:
        log.warning(
            "The checkpoint holds CUDA RNG states for %d devices, this process sees %d: restoring the first %d.",
            saved.shape[0],
            count,
            min(count, saved.shape[0]),
        )
    for device in range(min(count, saved.shape[0])):
        torch.cuda.set_rng_state(saved[device].cpu().to(torch.uint8), device)
