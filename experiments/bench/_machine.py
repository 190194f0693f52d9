"""The bench scripts' shared harness: where they ran (the CPU's name, a child's peak CUDA memory), the medlab
child process, and the RESULTS.md section writer."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path


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


def medlab_child(result_path: str, argv: list[str]) -> None:
    """Run ``python -m medlab ARGV`` in this process (so the GPU peak can be read afterwards), write
    ``{"cuda_peak_mib": ...}`` to ``result_path`` whatever the outcome, and exit with medlab's exit code."""
    import runpy

    sys.argv = ["medlab", *argv]
    code = 0
    try:
        runpy.run_module("medlab", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        Path(result_path).write_text(json.dumps({"cuda_peak_mib": cuda_peak()}))
    sys.exit(code)


def append_results(path: Path, section: str, script: str, text: str) -> None:
    """Append ``text`` at the end of ``section`` (a ``## `` heading) of the results file, creating the file and the
    section (which points at ``script``'s docstring) when missing."""
    if not path.exists():
        path.write_text("# Benchmark results\n\nTables written by the scripts in `experiments/bench/` (newest last in "
                        "each section), each with the machine, versions and command that produced it.\n")
    doc = path.read_text()
    if section not in doc:
        doc = doc.rstrip("\n") + f"\n\n{section}\n\n`experiments/bench/{script}`: see its docstring for what " \
              "is held equal and how each number is measured.\n"
    start = doc.index(section) + len(section)
    nxt = doc.find("\n## ", start)
    end = len(doc) if nxt < 0 else nxt
    doc = doc[:end].rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n" + doc[end:]
    path.write_text(doc)
