#!/usr/bin/env python
"""DPO with SmolLM2-135M-Instruct + LoRA on real Chinese preference pairs: held-out implicit-reward accuracy.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/preference/dpo_smollm2.py --steps 60 --batch-size 4 \
        --accumulate 2 --max-length 192 --lr 3e-4

Data: ``../shared/data/preference/medicalgpt_medical_pairs_zh.jsonl`` (100 medical pairs: question,
response_chosen, response_rejected) + ``dpo_zh_500.jsonl`` (500 general ShareGPT pairs), read by ``data=preference``
(formats detected per file). Held out **by row**, per file, with a fixed seed (``--seed``): ``--val-medical`` rows of
the medical file and ``--val-general`` rows of the general file go to a held-out file, never trained on; the rest is
the training set (both written under the run's output dir, the source rows unchanged). The run is
``+experiment=dpo_lora model=smollm2_135m`` (sigmoid DPO, beta, LoRA r 8 on every projection, reference = the
adapter-disabled model), without validation during training (the held-out pairs are scored once, at the end).

Reported on the held-out pairs (all, and per source file), from the trained run's own ``policy_logps`` /
``reference_logps`` (the code ``medlab.evaluate`` runs, ``medlab.evaluation.dpo_eval``):

* ``implicit_reward_accuracy`` / ``margin`` after training, and before: the untrained policy is its own reference,
  so every implicit reward is exactly 0 (a tie on every pair: chance, 0.5; ``dpo_eval`` counts ties as wrong, 0.0);
* the baselines the implicit reward should beat: the untrained SmolLM2's own ranking of chosen over rejected by
  summed log-prob and by per-token average log-prob (what a "pick the likelier answer" rule gets). They are the
  reference's log-probs, so they come from the same pass.

Appends a table to ``experiments/preference/README.md`` with the machine and the command (``--no-append``: not).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "preference"
MEDICAL, GENERAL = "medicalgpt_medical_pairs_zh.jsonl", "dpo_zh_500.jsonl"
RESULTS = Path(__file__).resolve().parent / "README.md"


def split_by_row(out: Path, n_val: dict[str, int], seed: int) -> tuple[list[Path], list[Path]]:
    """Per source file: ``n_val[name]`` rows (seeded permutation) to ``val_<name>``, the rest to ``train_<name>``."""
    out.mkdir(parents=True, exist_ok=True)
    train, val = [], []
    for name, k in n_val.items():
        lines = [line for line in (SHARED / name).read_text(encoding="utf-8").splitlines() if line.strip()]
        order = list(range(len(lines)))
        random.Random(seed).shuffle(order)
        held = set(order[:k])
        for prefix, keep, paths in (("train_", lambda i: i not in held, train), ("val_", lambda i: i in held, val)):
            path = out / f"{prefix}{name}"
            path.write_text("".join(lines[i] + "\n" for i in range(len(lines)) if keep(i)), encoding="utf-8")
            paths.append(path)
    return train, val


@torch.no_grad()
def score_held_out(module, data, val_paths: list[Path], batch_size: int) -> dict:
    """Per held-out file and overall: implicit-reward accuracy/margin of the trained policy and the untrained
    model's log-prob rankings (the reference's log-probs: the adapter-disabled base)."""
    module.eval()
    per: dict[str, list[tuple[float, float, float, float, int, int]]] = {}
    for path in val_paths:
        data.val_path, data.val_paths = [str(path)], [path]
        data.setup(module.tokenizer)
        rows = list(data.val_dataset or [])
        for s in range(0, len(rows), batch_size):
            batch = data.collate(rows[s:s + batch_size])
            batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            lp, n = module.policy_logps(batch)
            ref = module.reference_logps(batch, "eval")
            b = len(batch["ids"])
            for i in range(b):
                per.setdefault(path.name.removeprefix("val_"), []).append(
                    (float(lp[i]), float(lp[b + i]), float(ref[i]), float(ref[b + i]), int(n[i]), int(n[b + i])))
    per["all"] = [r for v in list(per.values()) for r in v]
    beta = module.beta
    out = {}
    for key, rs in per.items():
        rc = [beta * (a - c) for a, _, c, _, _, _ in rs]
        rr = [beta * (b - d) for _, b, _, d, _, _ in rs]
        out[key] = {"n": len(rs),
                    "implicit_reward_accuracy": sum(x > y for x, y in zip(rc, rr)) / len(rs),
                    "implicit_reward_margin": sum(x - y for x, y in zip(rc, rr)) / len(rs),
                    "rewards_chosen": sum(rc) / len(rs), "rewards_rejected": sum(rr) / len(rs),
                    "untrained_sum_logprob_acc": sum(c > d for _, _, c, d, _, _ in rs) / len(rs),
                    "untrained_mean_logprob_acc": sum(c / nc > d / nr for _, _, c, d, nc, nr in rs) / len(rs)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step")
    p.add_argument("--accumulate", type=int, default=2, help="micro-batches per step (batch-size / accumulate pairs "
                   "per forward: bounds the activation memory)")
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--val-medical", type=int, default=30, help="held-out rows of the medical file")
    p.add_argument("--val-general", type=int, default=40, help="held-out rows of the general file")
    p.add_argument("--seed", type=int, default=0, help="the held-out rows' permutation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "experiments" / "dpo_smollm2")
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    import medlab
    from medlab.evaluation import load_run

    out = a.out / _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    train, val = split_by_row(out / "data", {MEDICAL: a.val_medical, GENERAL: a.val_general}, a.seed)
    overrides = ["model=smollm2_135m", "data=preference", "data.path=[" + ",".join(map(str, train)) + "]",
                 "data.val_split=0", f"data.max_length={a.max_length}",
                 f"data.batch_size={a.batch_size // a.accumulate}",
                 f"trainer.accumulate_grad_batches={a.accumulate}",
                 f"trainer.max_steps={a.steps}", f"trainer.ckpt_every_n_steps={a.steps}", "trainer.progress_bar=false",
                 f"objective.lr={a.lr}", f"objective.beta={a.beta}", "export.enabled=false",
                 "trainer.log_every_n_steps=5", "logger=csv", "trainer.monitor=train/loss",
                 "trainer.monitor_mode=min", "trainer.val_every_n_steps=null"]
    cfg = medlab.compose("dpo_lora", overrides, run_dir=str(out / "run"))
    result = medlab.run(cfg)
    t0 = time.perf_counter()
    loaded = load_run(str(result.run_dir), checkpoint="latest")
    scores = score_held_out(loaded.module, loaded.module._data or _data_of(loaded.cfg), val, batch_size=8)
    keys = ("step", "train/loss", "train/rewards/accuracies", "train/rewards/margins")
    train_log = [{k: h[k] for k in keys if k in h}
                 for h in result.history if "train/loss" in h]
    report = {"held_out": scores, "train_log": train_log, "run_dir": str(result.run_dir),
              "train_pairs": result.metrics.get("data/train/kept"),
              "train_seconds": result.metrics.get("train_seconds"),
              "eval_seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(report, indent=2, default=str))
    if not a.no_append:
        RESULTS.write_text((RESULTS.read_text() if RESULTS.exists() else "# Preference alignment studies\n")
                           + _table(a, report))


def _data_of(cfg):
    from hydra.utils import instantiate

    return instantiate(cfg.data)


def _table(a, r) -> str:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    s = r["held_out"]
    lines = [f"\n## DPO, SmolLM2-135M-Instruct + LoRA, held-out implicit-reward accuracy ({_dt.date.today()}, {cpu})",
             "", f"{r['train_pairs']} training / {s['all']['n']} held-out pairs (held out by row, seed {a.seed}: "
             f"{a.val_medical} of {MEDICAL}, {a.val_general} of {GENERAL}); {a.steps} steps x {a.batch_size} pairs "
             f"({a.accumulate} micro-batches), "
             f"lr {a.lr}, beta {a.beta}, LoRA r 8, max length {a.max_length}; {float(r['train_seconds']):.0f} s of "
             "training.", "",
             "| held-out pairs | n | implicit-reward acc. before (all rewards 0: ties) | after | margin after "
             "| untrained: sum log-prob ranks chosen first | untrained: mean log-prob ranks chosen first |",
             "|---|---|---|---|---|---|---|"]
    for key, m in s.items():
        lines.append(f"| {key} | {m['n']} | 0.5 (ties) | **{m['implicit_reward_accuracy']:.3f}** | "
                     f"{m['implicit_reward_margin']:.3f} | {m['untrained_sum_logprob_acc']:.3f} | "
                     f"{m['untrained_mean_logprob_acc']:.3f} |")
    lines += ["", "Training (step: loss, batch reward accuracy): "
              + ", ".join(f"{h['step']}: {h['train/loss']:.3f}, {h.get('train/rewards/accuracies', float('nan')):.2f}"
                          for h in r["train_log"]), "",
              f"`OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/preference/dpo_smollm2.py "
              f"{' '.join(sys.argv[1:])}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
