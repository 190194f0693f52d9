#!/usr/bin/env python
"""medlab PPO vs TRL's experimental ``PPOTrainer`` (TRL 1.12: removed from TRL in 1.13) on the same policy, reward
model, prompts and generation settings (issue 17 "Benchmark").

TRL 1.16 (the venv's) has no PPO, so TRL 1.12 is installed into its own folder and put first on the TRL child's
``sys.path`` only::

    .venv/bin/pip install --target /tmp/trl112 --no-deps "trl==1.12.*"
    .venv/bin/python experiments/bench/ppo_vs_trl.py --trl-path /tmp/trl112          # a few minutes on 2 CPU cores
    .venv/bin/python experiments/bench/ppo_vs_trl.py --trl-path /tmp/trl112 --repeats 2 --no-append
    .venv/bin/python experiments/bench/ppo_vs_trl.py --model smollm2_135m --batch-prompts 4 --lr 1e-5   # SmolLM2-135M

What is held equal:

* Policy: ``--model`` (the warm-started tiny Llama ``tiny_llama_base`` by default, or ``smollm2_135m``) + LoRA
  with ``experiment=ppo_lora``'s r / alpha / targets (dropout 0); the reference is the base with adapters disabled
  on both sides.
* Reward model: one medlab ``reward_model`` run on the same base (trained here first, ``--rm-steps``); medlab scores
  with it as the ``reward_model`` reward (``run_dir``), TRL loads its HF export with
  ``AutoModelForSequenceClassification``. (medlab's reward re-renders the row's question + completion with the
  reward model's chat template; TRL scores the policy's own prompt + completion tokens: similar lengths.)
* Critic: medlab's = a second LoRA adapter + value head on the policy's base (``medlab.rl.critic``); TRL's = a
  separate ``AutoModelForSequenceClassification`` copy of the base, fully trained (TRL has no adapter critic).
* Per experience: ``--batch-prompts`` prompts, one completion each, ``--max-new-tokens`` (stop at the chat template's
  end-of-turn token), temperature 1.0, top_k 0, top_p 1.0, ``--ppo-epochs`` x ``--mini-batches`` optimizer steps,
  lr (constant), kl_coef, k1, gamma 1, lam 0.95, cliprange 0.2, cliprange_value 0.2, vf_coef 0.1, grad clip 1.0,
  fp32, no dropout. TRL: ``per_device_train_batch_size = B``, ``gradient_accumulation_steps = 1``. TRL shuffles its
  prompts (its own DataLoader), medlab reads them in file order: the same prompt set, not the same order.
* One process per run, frameworks alternating (ABBA) over ``--repeats``, ``OMP_NUM_THREADS`` equal.

Measured (the first ``--warmup`` experiences excluded): **experience s** = wall seconds from one experience's last
optimizer step to the next one's (generation, scoring, no-grad passes and every optimizer step of the experience:
medlab a Fabric callback at ``on_before_optimizer_step``, TRL ``on_step_end``, called once per PPO batch);
**generate s** (medlab ``train/time/generate_s``, TRL its ``batch_generation``); **peak RSS** of the child
(``ru_maxrss``) or the peak CUDA allocation on a GPU.

``--count-passes`` (a separate, short run: the global module hooks cost a little time) also counts, per
experience and per side, what went through every decoder: token-embedding calls split into generation (prefill +
decode steps), no-grad full-sequence passes (old / reference log-probs, values, reward model) and passes with
gradients (the update), with their token counts, and the positions the LM head computed -- the pass accounting
of RESULTS.md.
"""

from __future__ import annotations

import argparse
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
SECTION = "## PPO vs TRL PPOTrainer (TRL 1.12 experimental)"


class PassCounter:
    """Global forward hooks: per decoder call (one token-embedding call) its rows x length, grouped into
    ``generate`` (inside the engine's generate), ``no_grad`` and ``grad`` passes, with the LM-head positions
    (``nn.Linear`` with ``vocab`` outputs). ``summary(n)`` divides by ``n`` experiences."""

    def __init__(self, vocab: int):
        import torch

        self.vocab, self.in_generate, self.paused = vocab, False, False  # paused: medlab's validation
        self.counts: dict[str, dict[str, float]] = {}

        def hook(module, inputs, output):
            if self.paused or not inputs or not isinstance(inputs[0], torch.Tensor):
                return
            kind = "generate" if self.in_generate else ("grad" if torch.is_grad_enabled() else "no_grad")
            c = self.counts.setdefault(kind, {"passes": 0, "tokens": 0, "lm_head_positions": 0})
            if isinstance(module, torch.nn.Embedding) and module.num_embeddings == vocab:
                c["passes"] += 1
                c["tokens"] += inputs[0].numel()
            elif isinstance(module, torch.nn.Linear) and module.out_features == vocab:
                c["lm_head_positions"] += inputs[0].numel() // inputs[0].shape[-1]

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)

    def wrap_generate(self, fn):
        def wrapped(*args, **kwargs):
            self.in_generate = True
            try:
                return fn(*args, **kwargs)
            finally:
                self.in_generate = False
        return wrapped

    def summary(self, experiences: int) -> dict:
        return {k: {m: v / experiences for m, v in c.items()} for k, c in self.counts.items()}


from _machine import cuda_peak as _peak_cuda  # noqa: E402  (the bench folder is sys.path[0])


# ----------------------------------------------------------------------------------------------- children
def medlab_child(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import medlab

    marks: list[float] = []

    class Timer:
        def on_before_optimizer_step(self, optimizer):
            marks.append(time.perf_counter())

        def on_validation_start(self):  # the pass counts are the experiences' (TRL runs no validation here)
            if counter is not None:
                counter.paused = True

        def on_validation_end(self):
            if counter is not None:
                counter.paused = False

    counter = None
    if spec.get("count_passes"):
        from medlab.rl.decode import KVCacheEngine

        counter = PassCounter(spec["vocab"])
        KVCacheEngine.generate = counter.wrap_generate(KVCacheEngine.generate)
    cfg = medlab.compose("ppo_lora", spec["medlab_overrides"], run_dir=spec["out_dir"])
    result = medlab.run(cfg, callbacks=[Timer()])
    per = spec["ppo_epochs"] * spec["mini_batches"]
    ends = marks[per - 1::per]
    rows = [h for h in result.history if "train/reward" in h]
    Path(result_path).write_text(json.dumps({
        "experience_s": [b - a for a, b in zip(ends, ends[1:])],
        "generate_s": [h["train/time/generate_s"] for h in rows][1:],
        "score": [h["train/score"] for h in rows], "mean_length": [h["train/completions/mean_length"] for h in rows],
        "cuda_peak_mib": _peak_cuda(),
        "passes": counter.summary(spec["experiences"]) if counter else None,
    }))


def trl_child(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    sys.path.insert(0, spec["trl_path"])
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_mod
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    assert trl.__version__.startswith("1.12"), trl.__file__
    cuda = spec["device"] == "cuda"
    gen_times: list[float] = []
    original = ppo_mod.batch_generation

    def timed_generation(*args, **kwargs):
        t = time.perf_counter()
        out = original(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        gen_times.append(time.perf_counter() - t)
        return out

    counter = PassCounter(spec["vocab"]) if spec.get("count_passes") else None
    ppo_mod.batch_generation = counter.wrap_generate(timed_generation) if counter else timed_generation
    tok = AutoTokenizer.from_pretrained(spec["model_dir"], padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(spec["model_dir"], num_labels=1, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["rm_dir"], num_labels=1, dtype=torch.float32)
    for m in (value, reward):
        m.config.pad_token_id = tok.pad_token_id
    lora = spec["lora"]
    peft_config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                             target_modules=list(lora["target_modules"]), bias=lora["bias"], task_type="CAUSAL_LM")
    rows = [{"input_ids": ids} for ids in spec["prompt_ids"]]
    B, n = spec["batch_prompts"], spec["experiences"]
    args = PPOConfig(
        output_dir=spec["out_dir"], per_device_train_batch_size=B, gradient_accumulation_steps=1,
        num_mini_batches=spec["mini_batches"], num_ppo_epochs=spec["ppo_epochs"], total_episodes=B * n,
        response_length=spec["max_new_tokens"], temperature=1.0, stop_token_id=spec["stop_token_id"],
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, kl_coef=spec["kl_coef"], kl_estimator="k1",
        gamma=1.0, lam=0.95, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, whiten_rewards=False,
        missing_eos_penalty=None, local_rollout_forward_batch_size=B, num_sample_generations=0, seed=spec["seed"],
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=not cuda, bf16=False,
        dataloader_num_workers=0, gradient_checkpointing=False, disable_tqdm=True,
    )
    marks: list[float] = []
    logs: list[dict] = []

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "objective/scores" in logs:
                _logs.append(dict(logs))

    _logs = logs
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                         train_dataset=Dataset.from_list(rows), eval_dataset=Dataset.from_list(rows[:B]),
                         value_model=value, peft_config=peft_config, callbacks=[Timer()])
    trainer.train()
    Path(result_path).write_text(json.dumps({
        "experience_s": [b - a for a, b in zip(marks, marks[1:])], "generate_s": gen_times[1:],
        "score": [entry.get("objective/scores") for entry in logs], "cuda_peak_mib": _peak_cuda(),
        "passes": counter.summary(spec["experiences"]) if counter else None,
    }))


# ----------------------------------------------------------------------------------------------- parent
def run_child(cmd: list[str], env: dict, log_path: Path) -> tuple[int, float, float]:
    t = time.perf_counter()
    with open(log_path, "w") as f:
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
    return os.waitstatus_to_exitcode(status), ru.ru_maxrss / 1024, time.perf_counter() - t


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores (1-min load average {os.getloadavg()[0]:.2f})"


def train_reward_model(work: Path, model: str, steps: int) -> tuple[Path, Path]:
    """A medlab reward_model run on the policy's base (sample preference pairs): its run dir and its HF export."""
    import medlab

    run_dir = work / f"reward_model_{model}"
    if not (run_dir / "export" / "config.json").exists():
        cfg = medlab.compose("reward_model", [f"model={model}", f"trainer.max_steps={steps}", "data.batch_size=4",
                                              "data.max_length=192", "trainer.val_every_n_steps=null",
                                              "trainer.progress_bar=false", "logger=none", "export.enabled=true"],
                             run_dir=str(run_dir))
        medlab.run(cfg)
    return run_dir, run_dir / "export"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trl-path", default="/tmp/trl112", help="a folder holding trl 1.12 (pip install --target)")
    p.add_argument("--model", default="tiny_llama_base", help="the policy's (and reward model's) model config")
    p.add_argument("--experiences", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="first experiences excluded from the timings")
    p.add_argument("--batch-prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--ppo-epochs", type=int, default=2)
    p.add_argument("--mini-batches", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--rm-steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--count-passes", action="store_true",
                   help="count decoder passes / tokens / LM-head positions per experience (hooks: not for timing)")
    a = p.parse_args()
    command = " ".join(shlex.quote(x) for x in ["python", os.path.relpath(__file__, ROOT), *sys.argv[1:]])

    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    import medlab
    from medlab.models.backbone import resolve_model_dir
    from medlab.rl.data import PromptData

    work = Path(a.work_dir or tempfile.mkdtemp(prefix="ppo_vs_trl_"))
    work.mkdir(parents=True, exist_ok=True)
    rm_run, rm_export = train_reward_model(work, a.model, a.rm_steps)
    cfg = medlab.compose("ppo_lora", [f"model={a.model}"], run_dir=str(work / "compose"))
    mc = OmegaConf.to_container(cfg.model, resolve=True)
    model_dir = resolve_model_dir(**{k: v for k, v in mc.items() if not k.startswith("_")})
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    dc = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if not k.startswith("_")}
    data = PromptData(**dc)
    data.setup(tok)
    ad = OmegaConf.to_container(cfg.adapter, resolve=True)
    stop = [t for t in data.stop_token_ids if t != tok.eos_token_id] or list(data.stop_token_ids)
    common = {"batch_prompts": a.batch_prompts, "experiences": a.experiences, "max_new_tokens": a.max_new_tokens,
              "ppo_epochs": a.ppo_epochs, "mini_batches": a.mini_batches, "lr": a.lr, "kl_coef": a.kl_coef,
              "seed": a.seed, "device": a.device}
    medlab_overrides = [
        f"model={a.model}", f"trainer.max_steps={a.experiences * a.ppo_epochs * a.mini_batches}",
        "trainer.val_every_n_steps=null",
        "trainer.ckpt_every_n_steps=null", "trainer.save_final_checkpoint=false", "export.enabled=false",
        "logger=none", "trainer.log_every_n_steps=1", "trainer.progress_bar=false", "trainer.shuffle=false",
        f"trainer.seed={a.seed}", f"data.batch_size={a.batch_prompts}", "objective.num_generations=1",
        f"objective.max_new_tokens={a.max_new_tokens}", "objective.temperature=1.0", "objective.top_p=1.0",
        "objective.top_k=0", f"objective.lr={a.lr}", "objective.betas=[0.9,0.999]", f"objective.kl_coef={a.kl_coef}",
        "objective.kl_estimator=k1", f"objective.num_ppo_epochs={a.ppo_epochs}",
        f"objective.num_mini_batches={a.mini_batches}", "adapter.dropout=0.0", "trainer.gradient_clip_val=1.0",
        "~objective.rewards", f"+objective.rewards={{rm: {{_target_: reward_model, run_dir: {rm_run}}}}}",
        f"strategy.accelerator={a.device}",
    ]
    spec = dict(common, model_dir=str(model_dir), rm_dir=str(rm_export), trl_path=a.trl_path,
                lora={k: ad[k] for k in ("r", "alpha", "dropout", "target_modules", "bias")} | {"dropout": 0.0},
                prompt_ids=[list(e["prompt_ids"]) for e in data.train_dataset], stop_token_id=int(stop[0]),
                medlab_overrides=medlab_overrides, count_passes=a.count_passes,
                vocab=int(json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]))
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""

    runs: dict[str, list[dict]] = {"medlab": [], "trl": []}
    for rep in range(a.repeats):
        for fw in (["medlab", "trl"] if rep % 2 == 0 else ["trl", "medlab"]):
            d = work / f"{fw}_{rep}"
            d.mkdir(parents=True, exist_ok=True)
            spec_path, res_path = d / "spec.json", d / "child.json"
            spec_path.write_text(json.dumps(dict(spec, out_dir=str(d / "out"))))
            print(f"[{_dt.datetime.now():%H:%M:%S}] repeat {rep} {fw} ...", flush=True)
            rc, rss, wall = run_child([sys.executable, __file__, f"_{fw}_child", str(spec_path), str(res_path)], env,
                                      d / "child.log")
            if rc != 0:
                sys.exit(f"{fw} child failed (rc={rc}); see {d / 'child.log'}:\n"
                         + (d / "child.log").read_text()[-4000:])
            res = json.loads(res_path.read_text())
            exp = res["experience_s"][max(a.warmup - 1, 0):]
            gen = res["generate_s"][max(a.warmup - 1, 0):]
            res.update(rss_mib=rss, wall=wall, exp=statistics.mean(exp), gen=statistics.mean(gen), n=len(exp))
            runs[fw].append(res)
            print(f"    experience {res['exp']:.3f}s (n={len(exp)}) generate {res['gen']:.3f}s rss {rss:.0f} MiB "
                  f"wall {wall:.0f}s", flush=True)

    def med(fw, key):
        return statistics.median(r[key] for r in runs[fw])

    def cell(fw, key, fmt="{:.3f}"):
        vals = [r[key] for r in runs[fw]]
        return fmt.format(statistics.median(vals)) + (" [" + ", ".join(fmt.format(v) for v in vals) + "]"
                                                      if len(vals) > 1 else "")

    mem = "peak CUDA alloc MiB" if a.device == "cuda" else "peak RSS MiB"
    memkey = "cuda_peak_mib" if a.device == "cuda" else "rss_mib"
    names = {"medlab": "medlab PPO (critic = 2nd LoRA adapter + head)", "trl": "TRL 1.12 PPOTrainer (value model copy)"}
    lines = [f"| framework | experience s [per repeat] | experiences/s | generate s | update+score s | {mem} |",
             "|---|---|---|---|---|---|"]
    for fw in ("medlab", "trl"):
        lines.append(f"| {names[fw]} | {cell(fw, 'exp')} | {1 / med(fw, 'exp'):.3f} | {cell(fw, 'gen')} | "
                     f"{med(fw, 'exp') - med(fw, 'gen'):.3f} | {max(r[memkey] or 0 for r in runs[fw]):.0f} |")
    speed = med("trl", "exp") / med("medlab", "exp")
    mem_ratio = max(r[memkey] or 0 for r in runs["medlab"]) / max(r[memkey] or 1 for r in runs["trl"])
    passes = []
    if a.count_passes:
        passes = ["", "Decoder passes per experience (first repeat; `--count-passes`): generation = prefill + decode "
                  "steps; no-grad = full-sequence passes without gradients; grad = the update's passes",
                  "", "| framework | kind | passes | tokens | LM-head positions |", "|---|---|---|---|---|"]
        for fw in ("medlab", "trl"):
            for kind, c in sorted((runs[fw][0].get("passes") or {}).items()):
                passes.append(f"| {fw} | {kind} | {c['passes']:.1f} | {c['tokens']:.0f} | "
                              f"{c['lm_head_positions']:.0f} |")
    import peft
    import torch
    import transformers

    block = "\n".join([
        f"### {_dt.datetime.now():%Y-%m-%d_%H-%M-%S} — {a.device} fp32", "",
        f"- machine: {machine()}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, peft {peft.__version__}, TRL 1.12.0 (from {a.trl_path})",
        f"- command: `{command}`",
        f"- settings: {a.model} + LoRA r={spec['lora']['r']} alpha={spec['lora']['alpha']}, reward model = a "
        f"medlab reward_model run ({a.rm_steps} steps) on the same base, {a.batch_prompts} prompts x 1 completion x "
        f"{a.max_new_tokens} new tokens per experience, {a.ppo_epochs} PPO epochs x {a.mini_batches} mini-batches, "
        f"{a.experiences} experiences ({a.warmup} warm-up excluded), OMP_NUM_THREADS={a.threads}, "
        f"{a.repeats} repeat(s)",
        "", *lines, *passes, "",
        f"- step rate medlab/TRL = **{speed:.2f}x** (goal >= 2x: {'MET' if speed >= 2 else 'MISSED'}); peak memory "
        f"medlab/TRL = {mem_ratio:.2f} (goal <= 1: {'MET' if mem_ratio <= 1 else 'MISSED'})",
        f"- mean score per experience: medlab {' '.join(f'{v:.2f}' for v in runs['medlab'][0]['score'])}; TRL "
        f"{' '.join(f'{v:.2f}' for v in runs['trl'][0]['score'] if v is not None)} (different reward encodings, see "
        "the script's docstring)", ""])
    print(block)
    if not a.no_append:
        out = Path(a.results)
        text = out.read_text() if out.exists() else "# Benchmark results\n"
        if SECTION not in text:
            text = text.rstrip() + f"\n\n{SECTION}\n\nRuns appended by `experiments/bench/ppo_vs_trl.py`.\n"
        start = text.index(SECTION) + len(SECTION)
        end = text.find("\n## ", start)
        end = len(text) if end < 0 else end
        out.write_text(text[:end].rstrip() + "\n\n" + block + text[end:])
        print(f"appended to {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_medlab_child", "_trl_child"):
        (medlab_child if sys.argv[1] == "_medlab_child" else trl_child)(sys.argv[2], sys.argv[3])
    else:
        main()
