"""The harness ``dpo_vs_trl.py`` and ``reward_vs_trl.py`` share: preference pairs tokenized once by medlab, one child
process per framework and repeat (peak RSS from ``wait4``), per-step times from medlab's ``metrics.csv`` and from a
TRL ``TrainerCallback``, medians over repeats, and the markdown table appended to ``RESULTS.md``.

A bench script supplies what differs: its TRL child (trainer, config, dataset), its medlab overrides, the model
directory both sides load, and the table's section title (see :func:`main`).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from _machine import cpu_name, cuda_peak, medlab_child  # noqa: F401  (medlab_child: the children's entry point)

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
DATA = ROOT.parent / "shared" / "data" / "preference" / "medicalgpt_medical_pairs_zh.jsonl"
LORA = {"r": 8, "alpha": 16, "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=True)


# ============================================================================================ children
def load_spec(spec_path: str) -> tuple[dict, list[dict], object]:
    """The TRL child's ``(spec, token rows, tokenizer)``."""
    from transformers import AutoTokenizer

    spec = json.loads(Path(spec_path).read_text())
    rows = [json.loads(line) for line in Path(spec["tokens"]).read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return spec, rows, tok


def lora_config(spec: dict, task_type: str):
    """peft's LoRA config with the bench's settings for ``--adapter lora``, else None."""
    if spec["adapter"] != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA["target_modules"], bias="none", task_type=task_type)


def pretokenized(trainer_cls: type) -> type:
    """``trainer_cls`` training on medlab's token ids exactly (its dataset preparation skipped)."""

    class PreTokenized(trainer_cls):
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    return PreTokenized


def train_timed(make_trainer: Callable[[list], object], result: str) -> None:
    """Build the trainer with a step clock among its callbacks, train, write the step times and losses."""
    import time

    from transformers import TrainerCallback

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

    make_trainer([Clock()]).train()
    Path(result).write_text(json.dumps({"step_s": times, "losses": losses, "cuda_peak_mib": cuda_peak()}))


def trl_args(spec: dict) -> dict:
    """The TrainingArguments both TRL trainers share (constant lr, AdamW fused, no clipping changes, no saving)."""
    return dict(output_dir=spec["out"], per_device_train_batch_size=spec["batch"], max_steps=spec["steps"],
                learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, max_length=None,
                logging_steps=1, report_to="none", save_strategy="no", gradient_checkpointing=False,
                use_cpu=spec["device"] != "cuda", bf16=False, seed=0, dataloader_num_workers=0,
                train_sampling_strategy="sequential", optim="adamw_torch_fused", disable_tqdm=True)


# ============================================================================================ parent
def base_model_dir(kind: str, work: Path) -> Path:
    """SmolLM2-135M-Instruct's HF dir (medlab's conversion of the GGUF) or a random 2-layer Llama over its vocab."""
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


def medlab_argv(a, pairs: Path, run_dir: Path, head: list[str]) -> list[str]:
    """``head`` (experiment, model, objective-specific overrides) + the settings both benches hold equal."""
    argv = [*head, "data=preference", f"data.path={pairs}", "data.val_split=0", f"data.max_length={a.max_length}",
            f"data.batch_size={a.batch_size}",
            "trainer.shuffle=false", f"trainer.max_steps={a.steps}", "trainer.val_every_n_steps=null",
            "trainer.ckpt_every_n_steps=null", "trainer.save_final_checkpoint=false", "export.enabled=false",
            "logger=csv", "trainer.log_every_n_steps=1", "trainer.progress_bar=false", "trainer.gradient_clip_val=1.0",
            f"objective.lr={a.lr}", "objective.scheduler=constant", "objective.warmup_ratio=0",
            "objective.betas=[0.9,0.999]", "objective.weight_decay=0.0", "trainer.seed=0",
            "strategy.precision=32-true", f"hydra.run.dir={run_dir}", f"objective.max_padding={a.medlab_max_padding}"]
    if a.device == "cuda":
        argv += ["strategy.accelerator=cuda"]
    return argv


def lora_overrides() -> list[str]:
    return [f"adapter.r={LORA['r']}", f"adapter.alpha={LORA['alpha']}", f"adapter.dropout={LORA['dropout']}",
            "adapter.target_modules=[" + ",".join(LORA["target_modules"]) + "]"]


def run_medlab(a, script: str, argv: list[str], run_dir: Path, work: Path, tag: str) -> dict:
    result = work / f"medlab_{tag}.json"
    rss, _ = _run_child([sys.executable, script, "--child", "medlab", str(result), *argv], a.threads)
    rows = list(csv.DictReader(open(next(run_dir.rglob("metrics.csv")))))
    steps = [r for r in rows if r.get("train/tokens_per_sec")]
    step_s = [float(r["train/tokens_seen"]) for r in steps]
    tokens = [b - a_ for a_, b in zip([0.0, *step_s[:-1]], step_s)]
    step_s = [t / float(r["train/tokens_per_sec"]) for t, r in zip(tokens, steps)]
    losses = [float(r["train/loss"]) for r in steps]
    peak = json.loads(result.read_text()).get("cuda_peak_mib")
    return {"step_s": step_s, "losses": losses, "mem_mib": peak if peak else rss, "tokens": tokens}


def run_trl(a, script: str, adapter: str, mdir: Path, tokens: Path, work: Path, tag: str) -> dict:
    spec = {"model_dir": str(mdir), "tokens": str(tokens), "adapter": adapter, "batch": a.batch_size,
            "steps": a.steps, "lr": a.lr, "device": a.device, "out": str(work / f"trl_{tag}")}
    spec_path, result = work / f"trl_{tag}_spec.json", work / f"trl_{tag}.json"
    spec_path.write_text(json.dumps(spec))
    rss, _ = _run_child([sys.executable, script, "--child", "trl", str(spec_path), str(result)], a.threads)
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


def main(*, script: str, description: str, section: str, default_adapter: str,
         trl_child: Callable[[str, str], None],
         model_dir: Callable[[str, Path], Path],
         medlab_head: Callable[[object, str, Path], list[str]]) -> None:
    """The bench's command line. ``medlab_head(args, adapter, model_dir)``: the overrides before the shared ones."""
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return medlab_child(sys.argv[3], sys.argv[4:]) if sys.argv[2] == "medlab" else trl_child(*sys.argv[3:5])
    name = Path(script).name
    p = argparse.ArgumentParser(description=description)
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
    adapters = a.adapter or [default_adapter]
    work = Path(tempfile.mkdtemp(prefix=f"{Path(script).stem}_"))
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
                if fw == "medlab":
                    run_dir = work / f"medlab_{tag}"
                    argv = medlab_argv(a, pairs, run_dir, medlab_head(a, adapter, mdir))
                    if adapter == "lora":
                        argv += lora_overrides()
                    r = run_medlab(a, script, argv, run_dir, work, tag)
                    assert [int(t) for t in r["tokens"]] == per_step[:len(r["tokens"])], "medlab token counts differ"
                else:
                    r = run_trl(a, script, adapter, mdir, tokens, work, tag)
                res[fw].append(r)
                print(f"{adapter} {fw} rep {rep}: steps {[round(s, 3) for s in r['step_s']]} "
                      f"losses {[round(x, 4) for x in r['losses']]} mem {r['mem_mib']:.0f} MiB", flush=True)
        m, t = summarize(res["medlab"], per_step, a.warmup), summarize(res["trl"], per_step, a.warmup)
        rows.append((adapter, m, t))
    head = (f"{a.model}, {a.device}, fp32, batch {a.batch_size} pairs, max length {a.max_length}, medlab max_padding "
            f"{a.medlab_max_padding}, {a.steps} steps "
            f"({a.warmup} warm-up excluded), {a.repeats} repeat(s), {a.threads} threads; {a.data.name}; "
            f"{sum(per_step)} tokens")
    lines = [f"{section} ({_dt.date.today()}, {cpu_name()})", "", head, "",
             "| adapter | medlab tok/s | TRL tok/s | speed-up | medlab step s | TRL step s | medlab peak MiB | "
             "TRL peak MiB | memory ratio | step-1 loss medlab / TRL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for adapter, m, t in rows:
        lines.append(f"| {adapter} | {m['tps']:.0f} | {t['tps']:.0f} | {m['tps'] / t['tps']:.2f}x | {m['step']:.3f} | "
                     f"{t['step']:.3f} | {m['mem']:.0f} | {t['mem']:.0f} | {m['mem'] / t['mem']:.2f}x | "
                     f"{m['loss1']:.4f} / {t['loss1']:.4f} |")
    lines += ["", f"`{' '.join(['python', f'experiments/bench/{name}', *sys.argv[1:]])}`", ""]
    text = "\n".join(lines)
    print(text)
    if not a.no_append:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write("\n" + text + "\n")
