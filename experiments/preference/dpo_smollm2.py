#!/usr/bin/env python
"""DPO with SmolLM2-135M-Instruct + LoRA on real Chinese preference pairs: held-out implicit-reward accuracy.

    nice -n 10 .venv/bin/python experiments/preference/dpo_smollm2.py --steps 60 --batch-size 4 --max-length 320

Data: ``../shared/data/preference/medicalgpt_medical_pairs_zh.jsonl`` (100 medical pairs: question,
response_chosen, response_rejected) + ``dpo_zh_500.jsonl`` (500 general ShareGPT pairs), read by ``data=preference``
(formats detected per file); ``data.val_split`` of the prompts held out (seed 0), the rest trained on. The run is
``+experiment=dpo_lora model=smollm2_135m`` (sigmoid DPO, beta 0.1, LoRA r 8 on every projection, reference = the
adapter-disabled model).

Reported on the held-out pairs (overall and per source file):

* ``implicit_reward_accuracy`` / ``margin`` of the trained policy (``medlab.evaluation.dpo_eval``; the untrained
  policy is its own reference, so it scores 0.0 / 0.0 by construction);
* the baselines the implicit reward must beat: the untrained SmolLM2's own ranking of chosen over rejected by
  summed log-prob and by per-token average log-prob (what a "pick the likelier answer" rule gets).

Appends a table to ``experiments/preference/RESULTS.md`` with the machine and the command.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "preference"
FILES = ("medicalgpt_medical_pairs_zh.jsonl", "dpo_zh_500.jsonl")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def held_out_batches(cfg, tokenizer, batch_size: int):
    """The run's held-out pairs (the same split training used), batched, with each pair's source file."""
    from hydra.utils import instantiate

    data = instantiate(cfg.data)
    data.setup(tokenizer)
    val = list(data.val_dataset)
    out = []
    for s in range(0, len(val), batch_size):
        chunk = val[s:s + batch_size]
        out.append((data.collate(chunk), [str(e.get("source") or "").split(" ")[0] for e in chunk]))
    return out


@torch.no_grad()
def logprob_baselines(module, batches) -> dict:
    from medlab.objectives.preference_common import sequence_logps

    by: dict[str, list] = {}
    for batch, sources in batches:
        lp, n = sequence_logps(module.model, batch["input_ids"].to(module.device),
                               batch["attention_mask"].to(module.device), batch["labels"].to(module.device))
        b = len(batch["ids"])
        s = (lp[:b] > lp[b:]).tolist()
        a = (lp[:b] / n[:b] > lp[b:] / n[b:]).tolist()
        for src, x, y in zip(sources, s, a):
            for key in ("all", Path(src).name):
                by.setdefault(key, []).append((x, y))
    return {k: {"n": len(v), "sum_logprob_acc": sum(x for x, _ in v) / len(v),
                "mean_logprob_acc": sum(y for _, y in v) / len(v)} for k, v in by.items()}


def implicit_by_source(loaded, batches) -> dict:
    from medlab.evaluation.dpo_eval import implicit_reward_metrics

    out = {"all": implicit_reward_metrics(loaded, [b for b, _ in batches])}
    names = {Path(s).name for _, srcs in batches for s in srcs}
    for name in sorted(names):
        picked = []
        for batch, sources in batches:
            idx = [i for i, s in enumerate(sources) if Path(s).name == name]
            if idx:
                picked.append(_subset(batch, idx))
        out[name] = implicit_reward_metrics(loaded, picked)
    return out


def _subset(batch: dict, idx: list[int]) -> dict:
    b = len(batch["ids"])
    rows = idx + [b + i for i in idx]
    out = {k: v[rows] for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == 2 * b}
    out.update(ids=[batch["ids"][i] for i in idx], num_tokens=int(out["attention_mask"].sum()))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=320)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--val-split", type=float, default=0.1)
    p.add_argument("--val-every", type=int, default=None, help="validation (and checkpoint) interval; default: the end")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "experiments" / "dpo_smollm2")
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    import medlab
    from medlab.evaluation import load_run

    paths = "[" + ",".join(str(SHARED / f) for f in FILES) + "]"
    overrides = ["model=smollm2_135m", "data=preference", f"data.path={paths}", f"data.val_split={a.val_split}",
                 f"data.max_length={a.max_length}", f"data.batch_size={a.batch_size}", "data.val_batch_size=8",
                 f"trainer.max_steps={a.steps}", f"trainer.val_every_n_steps={a.val_every or a.steps}",
                 f"trainer.ckpt_every_n_steps={a.val_every or a.steps}", "trainer.progress_bar=false",
                 f"objective.lr={a.lr}", f"objective.beta={a.beta}", "export.enabled=false",
                 "trainer.log_every_n_steps=2", "logger=csv"]
    cfg = medlab.compose("dpo_lora", overrides, run_dir=str(a.out / _dt.datetime.now().strftime("%Y%m%d_%H%M%S")))
    result = medlab.run(cfg)
    loaded = load_run(str(result.run_dir))
    batches = held_out_batches(loaded.cfg, loaded.module.tokenizer, 8)
    trained = implicit_by_source(loaded, batches)
    base = load_run(None, ["+experiment=dpo_lora", *overrides])
    baselines = logprob_baselines(base.module, batches)
    history = [{k: v for k, v in h.items() if k.startswith("val/") or k == "step"} for h in result.history
               if "val/accuracy" in h]
    report = {"trained": trained, "baselines": baselines, "val_history": history, "run_dir": str(result.run_dir),
              "train_pairs": result.metrics.get("data/train/pairs"), "val_pairs": result.metrics.get("data/val/pairs"),
              "train_seconds": result.metrics.get("train_seconds")}
    print(json.dumps(report, indent=2, default=str))
    if not a.no_append:
        RESULTS.write_text((RESULTS.read_text() if RESULTS.exists() else "# Preference alignment studies\n")
                           + _table(a, report))


def _table(a, r) -> str:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    lines = [f"\n## DPO, SmolLM2-135M-Instruct + LoRA, held-out implicit-reward accuracy ({_dt.date.today()}, {cpu})",
             "", f"{r['train_pairs']} training / {r['val_pairs']} held-out pairs ({', '.join(FILES)}, "
             f"{a.val_split:.0%} of the prompts held out, seed 0); {a.steps} steps x {a.batch_size} pairs, lr {a.lr}, "
             f"beta {a.beta}, max length {a.max_length}; {r['train_seconds']} s of training on the CPU.", "",
             "| held-out pairs | n | DPO implicit-reward accuracy | margin | untrained: sum log-prob ranks chosen "
             "first | untrained: mean log-prob ranks chosen first |", "|---|---|---|---|---|---|"]
    for key, m in r["trained"].items():
        b = r["baselines"].get(key, {})
        lines.append(f"| {key} | {m['num_pairs']} | {m['implicit_reward_accuracy']:.3f} | "
                     f"{m['implicit_reward_margin']:.3f} | {b.get('sum_logprob_acc', float('nan')):.3f} | "
                     f"{b.get('mean_logprob_acc', float('nan')):.3f} |")
    lines += ["", "Validation during training (step: val/accuracy, val/margin): "
              + ", ".join(f"{h['step']}: {h['val/accuracy']:.3f}, {h['val/margin']:.3f}" for h in r["val_history"]),
              "", "The untrained policy is its own reference: implicit-reward accuracy 0.0 (ties count as wrong).", "",
              f"`python experiments/preference/dpo_smollm2.py {' '.join(sys.argv[1:])}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
