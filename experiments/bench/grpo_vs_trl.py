#!/usr/bin/env python
"""medlab GRPO vs TRL ``GRPOTrainer`` on the same tiny model, prompts, rewards and settings (issue 4 "Benchmark").

    .venv/bin/python experiments/bench/grpo_vs_trl.py                        # defaults: a few minutes on 2 CPU cores
    .venv/bin/python experiments/bench/grpo_vs_trl.py --steps 12 --repeats 2 --no-append
    python experiments/bench/grpo_vs_trl.py --device cuda --bf16             # GPU: peak = torch.cuda.max_memory_allocated

What is held equal (both sides read one spec the parent writes):

* Model: the warm-started tiny Llama of ``model=tiny_llama_base`` (built once by the parent with
  ``medlab.models.backbone.resolve_model_dir``; TRL's child loads that directory with ``AutoModelForCausalLM``),
  LoRA with the r / alpha / dropout / target modules of ``conf/adapter/lora.yaml`` + ``experiment=grpo_lora``.
* Prompts: the sample QA training prompts rendered by ``medlab.rl.data.PromptData.setup`` (chatml + system
  prompt); TRL gets the rendered *text* as a plain string prompt (no chat template re-applied; the shipped
  tokenizer adds no BOS, so the token ids are identical). Both sides take prompts in file order
  (``trainer.shuffle=false`` / ``shuffle_dataset=False``), so step k sees the same prompts on both sides.
* Rewards: ``medlab.rl.rewards.exact_match`` (weight 1.0) + ``format_reward(kind="answer")`` (0.1) as TRL
  ``reward_funcs`` with ``reward_weights``.
* Per optimizer step: ``--batch-prompts`` prompts x G completions, one generation per step
  (TRL: ``per_device_train_batch_size = B*G``, ``gradient_accumulation_steps = 1`` -> ``steps_per_generation = 1``,
  ``generation_batch_size = B*G``; ``num_iterations = 1``), max completion length, temperature 1.0, top_p 1.0,
  top_k 0, lr (constant, no warm-up), AdamW betas (0.9, 0.99) eps 1e-8 wd 0, grad clip 1.0, beta (k3 KL,
  reference = the base with adapters disabled on both sides), epsilon, token-level (DAPO) loss aggregation,
  group reward scaling, seed, fp32 (or bf16 with ``--bf16``), no vLLM (TRL ``use_vllm=False``). Generation: TRL
  uses HF ``generate``; medlab its default engine, ``objective.engine=medlab`` (a KV-cache decode loop that gives
  HF ``generate``'s tokens for the same RNG state without a host sync per token), or with ``--engine hf`` HF
  ``generate`` too.
* One process per run (``subprocess``), frameworks alternating (ABBA) over ``--repeats``, ``OMP_NUM_THREADS``
  equal for both children.

How each number is measured (the first ``--warmup`` steps are excluded):

* step: wall seconds per optimizer step. medlab: completions per step / ``train/samples_per_sec`` of its CSV log
  (``logger=csv trainer.log_every_n_steps=1``: measured between consecutive log points). TRL: a
  ``TrainerCallback`` taking ``on_step_end`` -> ``on_step_end`` times.
* generate: HF ``generate`` only. medlab ``train/time/generate_s``; TRL the duration of its own
  ``profiling_context("transformers.generate")`` (recorded by patching ``ProfilingContext._log_metrics``).
* score+ref: the rest of the experience (reward scoring, decoding, reference log-probs). medlab
  ``time/score_s + time/logprob_s``; TRL ``_generate_and_score_completions`` wall minus its generate time.
* update: step minus experience (both sides: forward/backward/clip/optimizer step + loop overhead); medlab's own
  ``train/time/update_s`` (forward/backward/clip only) is given in the notes.
* tokens/s: completion tokens generated / generate seconds (medlab ``train/rollout/tokens_per_s`` aggregated
  the same way; TRL ``completions/mean_length`` x B*G).
* peak memory: the child's ``ru_maxrss`` (``os.wait4``) on CPU; ``torch.cuda.max_memory_allocated`` on GPU.
* reward curve: mean total reward per step (all steps, warm-up included), medlab ``train/reward``, TRL ``reward``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## GRPO vs TRL GRPOTrainer"


# ----------------------------------------------------------------------------------------------- children
from _machine import cuda_peak as _peak_cuda, medlab_child  # noqa: E402  (the bench folder is sys.path[0])


def trl_child(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch
    import trl.extras.profiling as prof
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from medlab.rl.rewards import exact_match, format_reward

    prof_times: dict[str, list[float]] = {}
    orig_log = prof.ProfilingContext._log_metrics

    def _log_metrics(self, duration):  # TRL only forwards these to wandb/mlflow/trackio: keep them here
        prof_times.setdefault(self.name, []).append(duration)
        return orig_log(self, duration)

    prof.ProfilingContext._log_metrics = _log_metrics

    cuda = spec["device"] == "cuda"
    dtype = torch.bfloat16 if spec["bf16"] else torch.float32
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=dtype, attn_implementation="sdpa")
    lora = spec["lora"]
    peft_config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                             target_modules=list(lora["target_modules"]), bias=lora["bias"], task_type="CAUSAL_LM")
    ds = Dataset.from_list([{"prompt": p["prompt"], "answer": json.dumps(p["answer"])} for p in spec["prompts"]])

    def accuracy(prompts, completions, answer=None, **kw):
        return exact_match(prompts, completions, answer=[json.loads(a) for a in answer])

    def fmt(prompts, completions, **kw):
        return format_reward(prompts, completions, **spec["format_kwargs"])

    B, G = spec["batch_prompts"], spec["num_generations"]
    args = GRPOConfig(
        output_dir=spec["out_dir"], max_steps=spec["steps"], per_device_train_batch_size=B * G,
        gradient_accumulation_steps=1, num_generations=G, max_completion_length=spec["max_completion_length"],
        temperature=spec["temperature"], top_p=spec["top_p"], top_k=0, learning_rate=spec["lr"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.99,
        adam_epsilon=1e-8, max_grad_norm=1.0, beta=spec["beta"], epsilon=spec["epsilon"], loss_type="dapo",
        scale_rewards="group", num_iterations=1, use_vllm=False, seed=spec["seed"], data_seed=spec["seed"],
        shuffle_dataset=False, logging_steps=1, save_strategy="no", report_to="none", bf16=spec["bf16"],
        use_cpu=not cuda, dataloader_num_workers=0, remove_unused_columns=False,
        reward_weights=[spec["weights"]["accuracy"], spec["weights"]["format"]], log_completions=False,
        disable_tqdm=True, gradient_checkpointing=bool(lora.get("gradient_checkpointing", False)),
    )
    step_end: list[float] = []
    logs: list[dict] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            step_end.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            step_end.append(time.perf_counter())

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                logs_ = dict(logs)
                logs_["step"] = state.global_step
                _logs.append(logs_)

    _logs = logs
    exp_times: list[float] = []

    class Timed(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            t = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            if cuda:
                torch.cuda.synchronize()
            exp_times.append(time.perf_counter() - t)
            return out

    trainer = Timed(model=model, reward_funcs=[accuracy, fmt], args=args, train_dataset=ds,
                    processing_class=tok, peft_config=peft_config, callbacks=[Timer()])
    trainer.train()
    steps = [b - a for a, b in zip(step_end, step_end[1:])]
    gen = [x for k, v in prof_times.items() if k.split(".", 1)[-1] == "transformers.generate" for x in v]
    Path(result_path).write_text(json.dumps({
        "step_s": steps, "experience_s": exp_times, "generate_s": gen,
        "reward": [l.get("reward") for l in logs], "mean_length": [l.get("completions/mean_length") for l in logs],
        "step_time_trl": [l.get("step_time") for l in logs], "profiling": {k: len(v) for k, v in prof_times.items()},
        "cuda_peak_mib": _peak_cuda(),
    }))


# ----------------------------------------------------------------------------------------------- parent
def run_child(cmd: list[str], env: dict, log_path: Path) -> tuple[int, float, float]:
    t = time.perf_counter()
    with open(log_path, "w") as f:
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru.ru_maxrss / 1024, time.perf_counter() - t  # KiB -> MiB (Linux)


def medlab_overrides(a, run_dir: Path) -> list[str]:
    ov = ["+experiment=grpo_lora", "model=tiny_llama_base", f"trainer.max_steps={a.steps}",
          "trainer.val_every_n_steps=null", "trainer.ckpt_every_n_steps=null", "trainer.save_final_checkpoint=false",
          "export.enabled=false", "logger=csv", "trainer.log_every_n_steps=1", "trainer.progress_bar=false",
          "trainer.shuffle=false", f"trainer.seed={a.seed}", f"data.batch_size={a.batch_prompts}",
          f"objective.num_generations={a.num_generations}", f"objective.max_new_tokens={a.max_completion_length}",
          "objective.temperature=1.0", "objective.top_p=1.0", "objective.top_k=0", f"objective.lr={a.lr}",
          f"objective.beta={a.beta}", f"objective.epsilon={a.epsilon}", "objective.loss_aggregation=token",
          "objective.scale_rewards=group", "objective.num_iterations=1", "objective.scheduler=constant",
          "trainer.gradient_clip_val=1.0", f"objective.engine={a.engine}"]
    if a.bf16:
        ov.append("strategy.precision=bf16-true")
    if a.device == "cpu":
        ov.append("strategy.accelerator=cpu")
    return ov + [f"hydra.run.dir={run_dir}"]


def read_medlab(run_dir: Path, per_step: int) -> dict:
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("train/reward")]
    f = lambda r, k: float(r[k]) if r.get(k) not in (None, "") else float("nan")
    return {
        "step_s": [per_step / f(r, "train/samples_per_sec") for r in rows],
        "generate_s": [f(r, "train/time/generate_s") for r in rows],
        "experience_s": [f(r, "train/time/generate_s") + f(r, "train/time/score_s") + f(r, "train/time/logprob_s")
                         for r in rows],
        "update_own_s": [f(r, "train/time/update_s") for r in rows],
        "mean_length": [f(r, "train/completions/mean_length") for r in rows],
        "tokens_per_s_own": [f(r, "train/rollout/tokens_per_s") for r in rows],
        "reward": [f(r, "train/reward") for r in rows],
    }


def summarize(res: dict, warmup: int, per_step: int) -> dict:
    sl = slice(warmup, None)
    step, gen, exp = res["step_s"][sl], res["generate_s"][sl], res["experience_s"][sl]
    n = min(len(step), len(gen), len(exp))
    step, gen, exp = step[:n], gen[:n], exp[:n]
    toks = sum(m * per_step for m in res["mean_length"][sl][:n])
    return {"step": statistics.mean(step), "step_med": statistics.median(step), "gen": statistics.mean(gen),
            "score": statistics.mean(e - g for e, g in zip(exp, gen)),
            "update": statistics.mean(s - e for s, e in zip(step, exp)), "tps": toks / sum(gen), "n": n}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores (1-min load average {os.getloadavg()[0]:.2f})"


def versions(device: str) -> str:
    import peft
    import torch
    import transformers
    import trl

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "medlab", "conf"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
    except OSError:
        sha, dirty = "?", ""
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if device == "cuda" and torch.cuda.is_available() else ""
    return (f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"trl {trl.__version__}, peft {peft.__version__}, medlab {sha}{' (medlab/ or conf/ modified)' if dirty else ''}{gpu}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="first steps excluded from the timings")
    p.add_argument("--batch-prompts", type=int, default=2)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=24)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--beta", type=float, default=0.02)
    p.add_argument("--epsilon", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of both children")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--engine", choices=["medlab", "hf"], default="medlab",
                   help="medlab's generation engine: its KV-cache decode loop (default; the same tokens as HF generate, "
                        "no per-token host sync) or HF generate itself")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()
    t_all = time.perf_counter()
    command = " ".join(shlex.quote(x) for x in [os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else "python",
                                              os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    load0 = os.getloadavg()[0]

    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    import medlab
    from medlab.models.backbone import resolve_model_dir
    from medlab.rl.data import PromptData

    work = Path(a.work_dir or tempfile.mkdtemp(prefix="grpo_vs_trl_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = medlab.compose("grpo_lora", ["model=tiny_llama_base"], run_dir=str(work / "compose"))
    mc = OmegaConf.to_container(cfg.model, resolve=True)
    model_dir = resolve_model_dir(**{k: v for k, v in mc.items() if not k.startswith("_")})
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    dc = OmegaConf.to_container(cfg.data, resolve=True)
    dc = {k: v for k, v in dc.items() if not k.startswith("_")}
    dc["batch_size"] = a.batch_prompts
    data = PromptData(**dc)
    data.setup(tok)
    ad = OmegaConf.to_container(cfg.adapter, resolve=True)
    rw = OmegaConf.to_container(cfg.objective.rewards, resolve=True)
    assert rw["accuracy"]["_target_"] == "exact_match" and rw["format"]["_target_"] == "format", rw
    fmt_kwargs = {k: v for k, v in rw["format"].items() if k not in ("_target_", "weight")}
    per_step = a.batch_prompts * a.num_generations
    spec = {
        "model_dir": str(model_dir), "device": a.device, "bf16": a.bf16,
        "lora": {k: ad[k] for k in ("r", "alpha", "dropout", "target_modules", "bias", "gradient_checkpointing")},
        "prompts": [{"prompt": e["prompt"], "answer": e["fields"].get("answer")} for e in data.train_dataset],
        "weights": {"accuracy": rw["accuracy"]["weight"], "format": rw["format"]["weight"]},
        "format_kwargs": fmt_kwargs, "batch_prompts": a.batch_prompts, "num_generations": a.num_generations,
        "max_completion_length": a.max_completion_length, "temperature": 1.0, "top_p": 1.0, "lr": a.lr,
        "beta": a.beta, "epsilon": a.epsilon, "seed": a.seed, "steps": a.steps,
    }
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""

    runs: dict[str, list[dict]] = {"medlab": [], "trl": []}
    for rep in range(a.repeats):
        order = ["medlab", "trl"] if rep % 2 == 0 else ["trl", "medlab"]
        for fw in order:
            d = work / f"{fw}_{rep}"
            d.mkdir(parents=True, exist_ok=True)
            res_path = d / "child.json"
            if fw == "medlab":
                cmd = [sys.executable, __file__, "_medlab_child", str(res_path), "--", *medlab_overrides(a, d / "run")]
            else:
                spec_path = d / "spec.json"
                spec_path.write_text(json.dumps(dict(spec, out_dir=str(d / "trl_out"))))
                cmd = [sys.executable, __file__, "_trl_child", str(spec_path), str(res_path)]
            print(f"[{_dt.datetime.now():%H:%M:%S}] repeat {rep} {fw} ...", flush=True)
            rc, rss, wall = run_child(cmd, env, d / "child.log")
            if rc != 0:
                sys.exit(f"{fw} child failed (rc={rc}); see {d / 'child.log'}:\n" + (d / "child.log").read_text()[-4000:])
            child = json.loads(res_path.read_text())
            res = read_medlab(d / "run", per_step) if fw == "medlab" else child
            res.update(rss_mib=rss, cuda_peak_mib=child.get("cuda_peak_mib"), wall=wall)
            res["summary"] = summarize(res, a.warmup, per_step)
            runs[fw].append(res)
            s = res["summary"]
            print(f"    step {s['step']:.3f}s gen {s['gen']:.3f}s score+ref {s['score']:.3f}s update {s['update']:.3f}s "
                  f"{s['tps']:.1f} tok/s rss {rss:.0f} MiB wall {wall:.0f}s", flush=True)

    def cell(fw, key, fmt="{:.3f}"):
        vals = [r["summary"][key] for r in runs[fw]]
        m = statistics.median(vals)
        return fmt.format(m) + (" [" + ", ".join(fmt.format(v) for v in vals) + "]" if len(vals) > 1 else "")

    def mem(fw):
        vals = [(r["cuda_peak_mib"] if a.device == "cuda" else r["rss_mib"]) for r in runs[fw]]
        return f"{max(v or 0 for v in vals):.0f}"

    def curve(fw):
        rs = [r["reward"] for r in runs[fw]]
        per = [statistics.mean(x for x in col if x is not None) for col in zip(*rs)]
        return " ".join(f"{v:.2f}" for v in per)

    names = {"medlab": f"medlab GRPO (`objective.engine={a.engine}`)", "trl": "TRL GRPOTrainer"}
    memname = "peak CUDA alloc MiB" if a.device == "cuda" else "peak RSS MiB"
    lines = [f"| framework | step s [per repeat] | generate s | score+ref s | update s | rollout tok/s | {memname} | mean reward per step (1..{a.steps}) |",
             "|---|---|---|---|---|---|---|---|"]
    for fw in ("medlab", "trl"):
        lines.append(f"| {names[fw]} | {cell(fw, 'step')} | {cell(fw, 'gen')} | {cell(fw, 'score')} | {cell(fw, 'update')} | "
                     f"{cell(fw, 'tps', '{:.1f}')} | {mem(fw)} | {curve(fw)} |")
    ms = statistics.median(r["summary"]["step"] for r in runs["medlab"])
    ts = statistics.median(r["summary"]["step"] for r in runs["trl"])
    mg = statistics.median(r["summary"]["gen"] for r in runs["medlab"])
    tg = statistics.median(r["summary"]["gen"] for r in runs["trl"])
    mu = statistics.median(r["summary"]["update"] for r in runs["medlab"])
    tu = statistics.median(r["summary"]["update"] for r in runs["trl"])
    own_update = statistics.mean(x for r in runs["medlab"] for x in r["update_own_s"][a.warmup:])
    table = "\n".join(lines)
    notes = [
        f"- step rate medlab/TRL = **{ts / ms:.2f}×** (goal ≥ 1.5×: {'MET' if ts / ms >= 1.5 else 'MISSED'}); "
        f"generate time TRL/medlab = {tg / mg:.2f}×; update time TRL/medlab = {tu / mu:.2f}×",
        f"- medlab's own `train/time/update_s` (forward/backward/clip, timed steps): {own_update:.3f} s; "
        f"TRL's own `step_time` (training_step incl. generation, timed steps; gradient checkpointing off on both sides, TRL's default is on): "
        f"{statistics.mean(x for r in runs['trl'] for x in r['step_time_trl'][a.warmup:] if x is not None):.3f} s",
    ]
    load1 = os.getloadavg()[0]
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    block = "\n".join([
        f"### {stamp} — {a.device}{' bf16' if a.bf16 else ' fp32'}", "",
        f"- machine: {machine()}", f"- versions: {versions(a.device)}", f"- command: `{command}`",
        f"- settings: tiny_llama_base + LoRA r={spec['lora']['r']} alpha={spec['lora']['alpha']} dropout={spec['lora']['dropout']} "
        f"(all linear), {a.batch_prompts} prompts × G={a.num_generations} completions per optimizer step (one generation per "
        f"step, num_iterations 1), max completion length {a.max_completion_length}, temperature 1.0, top_p 1.0, top_k 0, "
        f"lr {a.lr:g} constant, beta {a.beta:g}, epsilon {a.epsilon:g}, token-level (DAPO) loss, group reward scaling, "
        f"rewards exact_match×{spec['weights']['accuracy']:g} + format×{spec['weights']['format']:g}, seed {a.seed}, "
        f"{'HF generate both sides' if a.engine == 'hf' else 'medlab: its KV-cache decode loop (same sampling maths as HF generate), TRL: HF generate'} (TRL use_vllm=False), OMP_NUM_THREADS={a.threads}, {a.steps} steps "
        f"(first {a.warmup} not timed), {a.repeats} repeat(s) per framework (alternating), prompts in file order",
        f"- 1-min load average at start/end: {load0:.2f} / {load1:.2f}"
        + (" — **the machine was shared with other jobs: step times are noisy**" if max(load0, load1) > (os.cpu_count() or 1) else ""),
        f"- wall time of the whole benchmark: {(time.perf_counter() - t_all) / 60:.1f} min", "",
        table, "", *notes, "",
        "generate = the generation call only (medlab: its `objective.engine`; TRL: HF `generate`); score+ref = rest of the experience (decode, rewards, reference log-probs); "
        "update = step − experience (forward/backward/clip/optimizer + loop overhead). Means over timed steps; "
        "the reward curve includes the warm-up steps (same prompts per step on both sides; sampling differs).", "",
    ])
    print("\n" + block)
    (work / "block.md").write_text(block)
    (work / "runs.json").write_text(json.dumps(runs, default=str))
    if not a.no_append:
        path = Path(a.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = path.read_text() if path.exists() else "# Benchmark results\n"
        if SECTION not in doc:
            doc = doc.rstrip("\n") + f"\n\n{SECTION}\n\n`experiments/bench/grpo_vs_trl.py`: see its docstring for what " \
                  "is held equal and how each number is measured.\n"
        start = doc.index(SECTION) + len(SECTION)
        nxt = doc.find("\n## ", start)  # the block goes at the end of this script's own section
        end = len(doc) if nxt < 0 else nxt
        path.write_text(doc[:end].rstrip("\n") + "\n\n" + block.rstrip("\n") + "\n" + doc[end:])
        print(f"appended to {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_medlab_child":
        medlab_child(sys.argv[2], sys.argv[4:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_trl_child":
        trl_child(sys.argv[2], sys.argv[3])
    else:
        main()
