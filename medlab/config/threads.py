"""``trainer.cpu_threads``: how many intra-op threads torch uses on a CPU run.

torch's default is one thread per physical core. A busy machine (other jobs, the data loader, a second
DDP process) turns that into oversubscription: OpenMP threads wait for each other at every parallel
region while the scheduler runs something else, and a run gets many times slower (the default run on a
busy 2-core machine: 175 s with torch's default, 9 s with one thread). ``auto`` therefore picks a
conservative count on CPU runs and leaves everything else alone:

- ``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``) set in the environment: respected, nothing is changed;
- a GPU run: torch's default is kept (the CPU only feeds the GPU);
- a CPU run: half the usable cores per process on this node, at least 1, at most ``AUTO_MAX_THREADS``
  (usable cores = the CPU affinity mask, capped by torch's own default, i.e. the physical cores).

An integer sets that many threads; ``null`` keeps torch's default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

AUTO_MAX_THREADS = 4
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cpu_threads_problems(setting: Any) -> list[str]:
    """The config check for ``trainer.cpu_threads``: ``auto``, ``null`` or an integer >= 1."""
    if setting is None or setting == "auto":
        return []
    if isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        return []
    return [f"trainer.cpu_threads must be auto, null or an integer >= 1, got {setting!r}"]


def resolve_cpu_threads(setting: Any, *, on_cpu: bool, processes_per_node: int = 1,
                        env: Mapping[str, str] | None = None, cores: int | None = None,
                        torch_default: int | None = None) -> tuple[int | None, str]:
    """``(threads, why)``: the count to pass to ``torch.set_num_threads`` (``None``: leave torch's as it is)
    and a sentence for the log. Pure: the environment, core count and torch's default can be passed in."""
    if setting is None:
        return None, "trainer.cpu_threads=null: torch's default kept"
    if setting != "auto":
        return int(setting), f"trainer.cpu_threads={int(setting)}"
    env = os.environ if env is None else env
    for name in ENV_VARS:
        if str(env.get(name, "")).strip():
            return None, f"{name}={env[name]} is set in the environment: respected"
    if not on_cpu:
        return None, "not a CPU run: torch's default kept"
    cores = usable_cores() if cores is None else cores
    if torch_default is not None:
        cores = min(cores, torch_default)
    per_process = cores // max(1, processes_per_node)
    n = max(1, min(AUTO_MAX_THREADS, per_process // 2))
    return n, (f"auto: half of {per_process} core(s) per process ({cores} usable, {processes_per_node} "
               f"process(es) on this node), at most {AUTO_MAX_THREADS}; set trainer.cpu_threads or "
               "OMP_NUM_THREADS to change it")
