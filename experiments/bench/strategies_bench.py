"""single vs ddp vs fsdp (FSDP2) on CPU: tokens/s and peak memory per process, the same global batch.

    nice -n 10 .venv/bin/python experiments/bench/strategies_bench.py --layers 2 --steps 6 --warmup 2

Each strategy trains the Qwen2.5-0.5B-shaped random-init model (``model=qwen2_5_0_5b_shape``, ``--layers`` of its
24 decoder layers, the shipped 32k tokenizer) with a full fine-tune (AdamW, fp32) on the sample SFT data through
``python -m medlab``: ``single`` = one process, batch ``2 x --batch-size``; ``ddp`` and ``fsdp`` = 2 gloo processes,
``--batch-size`` each (``strategy.accelerator=cpu strategy.devices=2``), so every strategy steps on the same global
batch. Measured from outside: tokens/s = label-bearing tokens of the timed steps (metrics.csv ``train/tokens_seen``
after the warm-up steps) / their wall time (the csv logger's row times), and the peak resident memory (VmHWM) of
every process of the run, sampled from /proc. The table (markdown) is printed and appended to RESULTS.md with
``--write``. On a lent GPU: ``--device cuda`` (bf16) for the same table on GPUs.

What the numbers mean on this machine: 2 CPU cores, so 2 processes share the cores one process has alone --
ddp and fsdp cannot be faster than single here; the point is the memory per process (FSDP2 holds 1/2 of the
weights, gradients and AdamW state per rank) at a measured throughput cost.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _session_hwm(sid: int) -> dict[int, int]:
    """{pid: VmHWM kB} of every live process in session ``sid``."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[3]) != sid:
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[int(stat.parent.name)] = int(line.split()[1])
        except (OSError, ValueError):
            continue
    return out


def run(strategy: str, a: argparse.Namespace, work: Path) -> dict:
    run_dir = work / strategy
    procs = 1 if strategy == "single" else 2
    batch = a.batch_size * (2 if strategy == "single" else 1)
    overrides = ["model=qwen2_5_0_5b_shape", f"model.arch.num_hidden_layers={a.layers}",
                 f"data.batch_size={batch}", f"data.max_length={a.max_length}", f"trainer.max_steps={a.steps}",
                 "trainer.log_every_n_steps=1", "trainer.val_every_n_steps=null", "trainer.ckpt_every_n_steps=null",
                 "trainer.save_final_checkpoint=false", "export.enabled=false", "trainer.progress_bar=false",
                 "logger=csv", "objective.lr=1e-4", f"hydra.run.dir={run_dir}", "data.limit=256"]
    if strategy != "single":
        overrides += [f"strategy={strategy}", "strategy.devices=2"]
        overrides += ["strategy.accelerator=cpu"] if a.device == "cpu" else ["strategy.accelerator=gpu"]
    if a.device == "cuda":
        overrides += ["strategy.precision=bf16-mixed"] if strategy != "fsdp" else []
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads_per_process), PYTHONUNBUFFERED="1")
    for key in ("MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    log = open(work / f"{strategy}.log", "w")
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "medlab", *overrides], cwd=work, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    peak: dict[int, int] = {}
    while proc.poll() is None:
        for pid, kb in _session_hwm(proc.pid).items():
            peak[pid] = max(kb, peak.get(pid, 0))
        time.sleep(0.5)
    log.close()
    if proc.returncode != 0:
        raise SystemExit(f"{strategy} failed (exit {proc.returncode}): see {work / (strategy + '.log')}")
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    seen = {int(r["step"]): float(r["train/tokens_seen"]) for r in rows if r.get("train/tokens_seen")}
    times = _step_times(run_dir / "train.log")
    w, last = a.warmup, a.steps
    tokens = seen[last] - seen[w]
    seconds = times[last] - times[w]
    workers = sorted(peak.values(), reverse=True)[:procs]
    return {"strategy": strategy, "processes": procs, "tokens_per_s": tokens / seconds,
            "s_per_step": seconds / (last - w), "peak_rss_mib": [round(kb / 1024) for kb in workers],
            "final_loss": json.loads((run_dir / "metrics.json").read_text()).get("train/loss"),
            "wall_s": time.time() - t0}


def _step_times(log: Path) -> dict[int, float]:
    """{step: time its 'step N/M:' line was logged} from the run's train.log (rank 0)."""
    import re
    from datetime import datetime

    out = {}
    pat = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[medlab.engine.loop\]\[INFO\] - step (\d+)/\d+: ")
    for line in log.read_text().splitlines():
        m = pat.match(line)
        if m:
            out.setdefault(int(m.group(2)), datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2, help="steps not timed")
    p.add_argument("--batch-size", type=int, default=2, help="per process under ddp/fsdp (single: twice this)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads-per-process", type=int, default=1)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--strategies", default="single,ddp,fsdp")
    p.add_argument("--write", action="store_true", help="append the table to experiments/bench/RESULTS.md")
    a = p.parse_args()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="strategies_bench_") as tmp:
        results = [run(s, a, Path(tmp)) for s in a.strategies.split(",")]
    load1 = os.getloadavg()[0]
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    head = [f"### {time.strftime('%Y-%m-%d_%H-%M-%S')} — single vs ddp vs fsdp ({a.device})", "",
            f"- machine: {cpu}, {os.cpu_count()} cores; 1-min load average {load0:.1f} at the start, {load1:.1f} at "
            "the end (the machine was shared with other jobs)" if load0 > 1.5 else
            f"- machine: {cpu}, {os.cpu_count()} cores; load {load0:.1f} -> {load1:.1f}",
            f"- versions: python {platform.python_version()}, torch {torch.__version__}",
            f"- command: `nice -n 10 .venv/bin/python experiments/bench/strategies_bench.py --layers {a.layers} "
            f"--steps {a.steps} --warmup {a.warmup} --batch-size {a.batch_size} --max-length {a.max_length}`",
            f"- model: Qwen2.5-0.5B shape (hidden 896, intermediate 4864, 14/2 heads), {a.layers} of 24 layers, "
            f"random init, full fine-tune, AdamW fp32; global batch {2 * a.batch_size} x <= {a.max_length} tokens; "
            f"steps {a.warmup + 1}..{a.steps} timed; {a.threads_per_process} thread(s) per process", "",
            "| strategy | processes | tokens/s | s/step | peak RSS per process (MiB) | final train loss |",
            "|---|---|---|---|---|---|"]
    rows = [f"| {r['strategy']} | {r['processes']} | {r['tokens_per_s']:.1f} | {r['s_per_step']:.2f} | "
            f"{' / '.join(map(str, r['peak_rss_mib']))} | {r['final_loss']:.4f} |" for r in results]
    text = "\n".join(head + rows) + "\n"
    print(text)
    if a.write:
        results_md = ROOT / "experiments" / "bench" / "RESULTS.md"
        body = results_md.read_text()
        section = "## Strategies: single vs ddp vs fsdp (FSDP2)"
        if section not in body:
            body += (f"\n{section}\n\n`experiments/bench/strategies_bench.py`: tokens/s and peak memory per process, "
                     "the same global batch; see its docstring.\n")
        results_md.write_text(body.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
