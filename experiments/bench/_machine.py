"""What every bench script reports about where it ran: the CPU's name and a child's peak CUDA memory."""

from __future__ import annotations

import os
import platform
import subprocess


def cuda_peak() -> float | None:
    """``torch.cuda.max_memory_allocated`` in MiB, or None without an initialized CUDA device."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.cuda.max_memory_allocated() / 2**20
    except Exception:  # noqa: BLE001
        pass
    return None


def cpu_name() -> str:
    """``lscpu``'s model name and the visible core count (the processor string where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
        return f"{name}, {os.cpu_count()} cores visible"
    except Exception:  # noqa: BLE001
        return platform.processor() or "unknown CPU"
