#!/usr/bin/env python
"""medlab DPO vs TRL ``DPOTrainer`` on the same model, pairs, batch, lengths and precision: tokens/s and peak memory.

    .venv/bin/python experiments/bench/dpo_vs_trl.py --model tiny --steps 4 --warmup 1 --no-append       # smoke
    nice -n 10 .venv/bin/python experiments/bench/dpo_vs_trl.py --model smollm2 --adapter lora --adapter full \
        --steps 8 --warmup 2 --batch-size 2 --max-length 256 --repeats 2

What is held equal (the parent writes one pairs file and one token file; every run is its own process):

* Model: ``smollm2`` = SmolLM2-135M-Instruct (the HF dir medlab converts from its GGUF, ``model=smollm2_135m`` /
  ``model=local_hf``), or ``tiny`` (a random 2-layer Llama over SmolLM2's vocabulary: framework overhead). fp32,
  sdpa attention, on the CPU (``--device cuda`` for a GPU).
* Pairs: real Chinese medical preference pairs (``../shared/data/preference/medicalgpt_medical_pairs_zh.jsonl``
  by default), only rows
  whose prompt + chosen and prompt + rejected fit ``--max-length`` (neither side truncates), exactly
  ``steps x batch`` of them, in file order on both sides (medlab ``trainer.shuffle=false``; TRL
  ``train_sampling_strategy=sequential``). The token ids are medlab's (``PreferenceData``: chatml prompt rendered
  once, completions ending with ``<|im_end|>``); TRL trains on exactly those ids (its dataset preparation is
  skipped, ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` given), so step k holds the same tokens on both sides.
* Objective: sigmoid DPO, beta 0.1, reference = the adapter-disabled model (``--adapter lora``: the
  ``conf/adapter/lora.yaml`` targets, r 8, alpha 16, dropout 0) or a frozen copy of the model (``--adapter full``);
  no precomputed reference. AdamW (fused where torch has it, both sides), constant lr, no warm-up, grad clip 1.0,
  no gradient checkpointing, no evaluation, no checkpoints, batch ``--batch-size`` pairs, accumulation 1.
  TRL 1.16 computes the log-probs through its fused LM head (its default); medlab through its chunked head path.
  Padding: each side its default -- TRL pads the batch's 2B rows to the longest one (its ``padding_free`` is
  "temporarily unavailable" in 1.16 and falls back to padding); medlab regroups the rows by length into forwards
  padded by at most 10% (``objective.max_padding=0.1``; ``--medlab-max-padding null``: one padded forward too).
* One process per run, frameworks alternating (ABBA) over ``--repeats``; ``OMP_NUM_THREADS=--threads``.

Measured (the first ``--warmup`` steps excluded): step time (medlab: from its per-step CSV log, tokens /
``train/tokens_per_sec``; TRL: ``on_step_end`` -> ``on_step_end`` of a callback; both include data loading);
tokens/s = the non-pad tokens of the timed steps (prompt + chosen + prompt + rejected, counted by the parent from
the ids both sides train on) / their summed step time; peak memory = the child's ``ru_maxrss`` (CPU) or
``torch.cuda.max_memory_allocated`` (GPU); the step-1 loss of both sides (equal weights and batch: ln 2 for LoRA).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## DPO vs TRL DPOTrainer"
DATA = ROOT.parent / "shared" / "data" / "preference" / "medicalgpt_medical_pairs_zh.jsonl"
LORA = {"r": 8, "alpha": 16, "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=True)


# ============================================================================================ children
def _cuda_peak() -> float | None:
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.cuda.max_memory_allocated() / 2**20
    except Exception:  # noqa: BLE001
        pass
    return None


def medlab_child(result: str, argv: list[str]) -> None:
    import runpy

    sys.argv = ["medlab", *argv]
    try:
        runpy.run_module("medlab", run_name="__main__", alter_sys=True)
    finally:
        Path(result).write_text(json.dumps({"cuda_peak_mib": _cuda_peak()}))


def trl_child(spec_path: str, result: str) -> None:
    import time

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    spec = json.loads(Path(spec_path).read_text())
    rows = [json.loads(line) for line in Path(spec["tokens"]).read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    peft_config = None
    if spec["adapter"] == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                 target_modules=LORA["target_modules"], bias="none", task_type="CAUSAL_LM")

    class PreTokenized(DPOTrainer):  # train on medlab's token ids exactly
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    times, losses = [], []

    class Clock(TrainerCallback):
        t = None

        def on_step_begin(self, args, state, control, **kw):
            if self.t is None:
                self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            times.append(now - self.t)
            self.t = now

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    cuda = spec["device"] == "cuda"
    args = DPOConfig(output_dir=spec["out"], per_device_train_batch_size=spec["batch"], max_steps=spec["steps"],
                     learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                     adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, beta=0.1,
                     loss_type=["sigmoid"], max_length=None, logging_steps=1, report_to="none", save_strategy="no",
                     gradient_checkpointing=False, use_cpu=not cuda, bf16=False, seed=0, dataloader_num_workers=0,
                     train_sampling_strategy="sequential", optim="adamw_torch_fused", disable_tqdm=True,
                     precompute_ref_log_probs=False)
    data = Dataset.from_list([{"prompt_ids": r["prompt_ids"], "chosen_ids": r["chosen_ids"],
                               "rejected_ids": r["rejected_ids"]} for r in rows])
    trainer = PreTokenized(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft_config,
                           callbacks=[Clock()])
    trainer.train()
    Path(result).write_text(json.dumps({"step_s": times, "losses": losses, "cuda_peak_mib": _cuda_peak()}))


# ============================================================================================ parent
def model_dir(kind: str, work: Path) -> Path:
    from medlab.models.backbone import resolve_model_dir

    cache = os.environ.get("MEDLAB_CACHE_DIR", str(ROOT / ".cache"))  # conf/paths: where medlab keeps it
    smol = resolve_model_dir(source="smollm2", cache_dir=cache)
    if kind == "smollm2":
        return smol
    out = work / "tiny_model"
    if not (out / "config.json").exists():
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(str(smol))
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **TINY)).save_pretrained(out)
        tok.save_pretrained(out)
    return out


def _preference_data(path: Path, tok_dir: Path, max_length: int):
    from medlab.data.preference import PreferenceData
    from transformers import AutoTokenizer

    data = PreferenceData(str(path), val_split=0.0, max_length=100_000, on_bad_row="skip")
    data.setup(AutoTokenizer.from_pretrained(str(tok_dir)))
    return data


def prepare_pairs(src: Path, tok_dir: Path, work: Path, n: int, max_length: int) -> tuple[Path, Path, list[int]]:
    """The first ``n`` pairs that fit ``max_length`` untruncated -> pairs.jsonl (medlab) + tokens.jsonl (TRL)."""
    raw = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    candidates = work / "candidates.jsonl"
    candidates.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in raw), encoding="utf-8")
    data = _preference_data(candidates, tok_dir, max_length)
    assert len(data.train_dataset) == len(raw), "every source row must survive (ids = row index)"
    keep = [e["id"] for e in data.train_dataset
            if max(len(e["prompt_ids"]) + len(e["chosen_ids"]), len(e["prompt_ids"]) + len(e["rejected_ids"]))
            <= max_length][:n]
    if len(keep) < n:
        raise SystemExit(f"only {len(keep)} pairs of {src} fit --max-length {max_length}; need {n}")
    pairs = work / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(raw[i], ensure_ascii=False) + "\n" for i in keep), encoding="utf-8")
    data = _preference_data(pairs, tok_dir, max_length)  # exactly what the medlab child will tokenize
    tokens = work / "tokens.jsonl"
    rows = [{k: e[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for e in data.train_dataset]
    tokens.write_text("".join(json.dumps(r) + "\n" for r in rows))
    per_pair = [2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows]
    return pairs, tokens, per_pair


def _run_child(cmd: list[str], threads: int) -> tuple[float, str]:
    """Run a child, return (peak RSS MiB of that child, output)."""
    env = {**os.environ, **ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryFile("w+") as log:
        pid = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).pid
        _, status, usage = os.wait4(pid, 0)
        log.seek(0)
        out = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child failed ({' '.join(cmd[:4])} ...):\n{out[-4000:]}")
    return usage.ru_maxrss / 1024, out


def run_medlab(a, adapter: str, mdir: Path, pairs: Path, work: Path, tag: str) -> dict:
    run_dir = work / f"medlab_{tag}"
    exp = "dpo_lora" if adapter == "lora" else "dpo"
    model = ["model=smollm2_135m"] if a.model == "smollm2" else ["model=local_hf", f"model.path={mdir}",
                                                                   "model.dtype=float32"]
    argv = [f"+experiment={exp}", *model, "data=preference", f"data.path={pairs}", "data.val_split=0", f"data.max_length={a.max_length}", f"data.batch_size={a.batch_size}",
            "trainer.shuffle=false", f"trainer.max_steps={a.steps}", "trainer.val_every_n_steps=null",
            "trainer.ckpt_every_n_steps=null", "trainer.save_final_checkpoint=false", "export.enabled=false",
            "logger=csv", "trainer.log_every_n_steps=1", "trainer.progress_bar=false", "trainer.gradient_clip_val=1.0",
            f"objective.lr={a.lr}", "objective.scheduler=constant", "objective.warmup_ratio=0", "objective.beta=0.1",
            "objective.betas=[0.9,0.999]", "objective.weight_decay=0.0", "trainer.seed=0",
            "strategy.precision=32-true", f"hydra.run.dir={run_dir}", f"objective.max_padding={a.medlab_max_padding}"]
    if a.device == "cuda":
        argv += ["strategy.accelerator=cuda"]
    if adapter == "lora":
        argv += [f"adapter.r={LORA['r']}", f"adapter.alpha={LORA['alpha']}", f"adapter.dropout={LORA['dropout']}",
                 "adapter.target_modules=[" + ",".join(LORA["target_modules"]) + "]"]
    result = work / f"medlab_{tag}.json"
    rss, _ = _run_child([sys.executable, __file__, "--child", "medlab", str(result), *argv], a.threads)
    rows = list(csv.DictReader(open(next(run_dir.rglob("metrics.csv")))))
    steps = [r for r in rows if r.get("train/tokens_per_sec")]
    step_s = [float(r["train/tokens_seen"]) for r in steps]
    tokens = [b - a_ for a_, b in zip([0.0, *step_s[:-1]], step_s)]
    step_s = [t / float(r["train/tokens_per_sec"]) for t, r in zip(tokens, steps)]
    losses = [float(r["train/loss"]) for r in steps]
    peak = json.loads(result.read_text()).get("cuda_peak_mib")
    return {"step_s": step_s, "losses": losses, "mem_mib": peak if peak else rss, "tokens": tokens}


def run_trl(a, adapter: str, mdir: Path, tokens: Path, work: Path, tag: str) -> dict:
    spec = {"model_dir": str(mdir), "tokens": str(tokens), "adapter": adapter, "batch": a.batch_size,
            "steps": a.steps, "lr": a.lr, "device": a.device, "out": str(work / f"trl_{tag}")}
    spec_path, result = work / f"trl_{tag}_spec.json", work / f"trl_{tag}.json"
    spec_path.write_text(json.dumps(spec))
    rss, _ = _run_child([sys.executable, __file__, "--child", "trl", str(spec_path), str(result)], a.threads)
    out = json.loads(result.read_text())
    out["mem_mib"] = out.get("cuda_peak_mib") or rss
    return out


def summarize(runs: list[dict], per_step_tokens: list[int], warmup: int) -> dict:
    tps, mem, step = [], [], []
    for r in runs:
        times = r["step_s"][warmup:]
        toks = per_step_tokens[warmup:len(r["step_s"])]
        tps.append(sum(toks) / sum(times))
        step.append(statistics.median(times))
        mem.append(r["mem_mib"])
    return {"tps": statistics.median(tps), "step": statistics.median(step), "mem": max(mem),
            "loss1": runs[0]["losses"][0] if runs[0]["losses"] else float("nan")}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return medlab_child(sys.argv[3], sys.argv[4:]) if sys.argv[2] == "medlab" else trl_child(*sys.argv[3:5])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    p.add_argument("--adapter", action="append", choices=("lora", "full"))
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--medlab-max-padding", default="0.1", help="medlab's objective.max_padding (null: one padded "
                   "forward like TRL)")
    p.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    a = p.parse_args()
    adapters = a.adapter or ["lora"]
    work = Path(tempfile.mkdtemp(prefix="dpo_vs_trl_"))
    mdir = model_dir(a.model, work)
    pairs, tokens, per_pair = prepare_pairs(a.data, mdir, work, a.steps * a.batch_size, a.max_length)
    per_step = [sum(per_pair[i:i + a.batch_size]) for i in range(0, len(per_pair), a.batch_size)]
    rows = []
    for adapter in adapters:
        res = {"medlab": [], "trl": []}
        for rep in range(a.repeats):
            order = ("medlab", "trl") if rep % 2 == 0 else ("trl", "medlab")
            for fw in order:
                tag = f"{adapter}_{rep}"
                r = (run_medlab(a, adapter, mdir, pairs, work, tag) if fw == "medlab"
                     else run_trl(a, adapter, mdir, tokens, work, tag))
                if fw == "medlab":
                    assert [int(t) for t in r["tokens"]] == per_step[:len(r["tokens"])], "medlab token counts differ"
                res[fw].append(r)
                print(f"{adapter} {fw} rep {rep}: steps {[round(s, 3) for s in r['step_s']]} "
                      f"losses {[round(x, 4) for x in r['losses']]} mem {r['mem_mib']:.0f} MiB", flush=True)
        m, t = summarize(res["medlab"], per_step, a.warmup), summarize(res["trl"], per_step, a.warmup)
        rows.append((adapter, m, t))
    cpu = _cpu_name()
    head = (f"{a.model}, {a.device}, fp32, batch {a.batch_size} pairs, max length {a.max_length}, medlab max_padding "
            f"{a.medlab_max_padding}, {a.steps} steps "
            f"({a.warmup} warm-up excluded), {a.repeats} repeat(s), {a.threads} threads; {a.data.name}; "
            f"{sum(per_step)} tokens")
    lines = [f"{SECTION} ({_dt.date.today()}, {cpu})", "", head, "",
             "| adapter | medlab tok/s | TRL tok/s | speed-up | medlab step s | TRL step s | medlab peak MiB | "
             "TRL peak MiB | memory ratio | step-1 loss medlab / TRL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for adapter, m, t in rows:
        lines.append(f"| {adapter} | {m['tps']:.0f} | {t['tps']:.0f} | {m['tps'] / t['tps']:.2f}x | {m['step']:.3f} | "
                     f"{t['step']:.3f} | {m['mem']:.0f} | {t['mem']:.0f} | {m['mem'] / t['mem']:.2f}x | "
                     f"{m['loss1']:.4f} / {t['loss1']:.4f} |")
    lines += ["", f"`{' '.join(['python', 'experiments/bench/dpo_vs_trl.py', *sys.argv[1:]])}`", ""]
    text = "\n".join(lines)
    print(text)
    if not a.no_append:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write("\n" + text + "\n")


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
        return f"{name}, {os.cpu_count()} cores visible"
    except Exception:  # noqa: BLE001
        return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
