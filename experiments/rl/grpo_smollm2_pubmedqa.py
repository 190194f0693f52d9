#!/usr/bin/env python
"""GRPO with SmolLM2-135M-Instruct + LoRA on PubMedQA: held-out accuracy and format failures before and after.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/rl/grpo_smollm2_pubmedqa.py --steps 12      # CPU
    .venv/bin/python experiments/rl/grpo_smollm2_pubmedqa.py --device cuda                                 # a GPU

The run is ``+experiment=grpo_lora model=smollm2_135m data=pubmedqa`` (rewards of ``conf/objective/grpo.yaml``:
``exact_match`` + ``format`` with ``kind=answer``; the format weight is ``--format-weight``) on
``../shared/data/qa/pubmedqa_train.jsonl`` with the abstracts in the prompt (``data.contexts_in_prompt``) and
``data.system_prompt`` asking for ``<answer>yes|no|maybe</answer>``.

Held-out slice: the rows whose rendered prompt fits ``--max-prompt-tokens`` (longer ones the data drops anyway),
permuted with ``--seed``; the first ``--val-n`` go to ``<out>/data/val.jsonl`` (never trained on), the rest to
``<out>/data/train.jsonl``. The slice is answered greedily, with the same prompt, engine and ``--eval-new-tokens``,
twice: by the untrained model (zero-shot: adapters freshly initialised, B = 0, so the base model) and by the
trained run's last checkpoint, through ``medlab.evaluation.evaluate_qa`` (what ``python -m medlab.evaluate
eval.task=qa`` runs): ``accuracy`` = the rewards' ``exact_match`` (the ``<answer>`` tag, else "answer is"/"Answer:",
else the whole completion; yes/no/maybe gold: the first such word of an explicit span, else the last),
``format_failure_rate`` = completions without exactly one non-empty ``<answer>...</answer>``.

Format bootstrap (``--demo fewshot3``): three short made-up solved examples (``DEMO_TURNS``: one yes, one no, one
maybe, each a context + question and the assistant's ``<answer>X</answer>``) go into every prompt as earlier chat
turns (``data.example_turns``), so training and both evaluations see the same prompt (``evaluate_qa`` renders the
run's data config); the held-out split is still chosen by the prompt length *without* them (the same slice as
``--demo none``), and ``data.max_prompt_length`` grows by the demonstration's tokens.

Writes ``experiments/rl/results/grpo_smollm2_pubmedqa_<device>.{json,md,png}`` (the reward curve from the run's
``metrics.csv`` + before/after bars); the run itself stays under ``--out`` (outputs/, not committed).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "qa" / "pubmedqa_train.jsonl"
RESULTS = Path(__file__).resolve().parent / "results"
# Made up for the prompt (not PubMedQA rows): the chat turns of --demo fewshot3, in the data's prompt format.
DEMO_TURNS = [
    {"role": "user", "content": "Context:\nIn a pilot study of 24 patients, a breathing exercise programme was "
     "followed by slightly lower anxiety scores, but the difference did not reach significance.\n\nQuestion: "
     "Does the breathing programme reduce anxiety?"},
    {"role": "assistant", "content": "<answer>maybe</answer>"},
    {"role": "user", "content": "Context:\nIn a trial of 400 adults, vitamin X supplements did not change the "
     "length of hospital stay after surgery compared with placebo.\n\nQuestion: Do vitamin X supplements shorten "
     "hospital stay after surgery?"},
    {"role": "assistant", "content": "<answer>no</answer>"},
    {"role": "user", "content": "Context:\nIn a randomized trial of 300 adults, daily brisk walking lowered systolic "
     "blood pressure by 6 mmHg compared with usual activity.\n\nQuestion: Does daily brisk walking lower blood "
     "pressure?"},
    {"role": "assistant", "content": "<answer>yes</answer>"},
]
DEMOS = {"none": None, "fewshot3": DEMO_TURNS}
# per device: the settings a flag does not give
PRESETS = {
    "cpu": {"steps": 12, "G": 4, "batch_size": 2, "max_new_tokens": 32, "eval_new_tokens": 32,
            "max_prompt_tokens": 512, "micro_batch_tokens": 600, "eval_batch_size": 10, "dtype": "float32"},
    "cuda": {"steps": 200, "G": 8, "batch_size": 8, "max_new_tokens": 128, "eval_new_tokens": 128,
             "max_prompt_tokens": 1024, "micro_batch_tokens": 32768, "eval_batch_size": 50, "dtype": "bfloat16"},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--steps", type=int, help="optimizer steps (trainer.max_steps)")
    p.add_argument("--minutes", type=float, help="training budget: steps = minutes * 60 / --s-per-step "
                   "(measure s/step with a --steps 2 smoke run first); overrides --steps")
    p.add_argument("--s-per-step", type=float, help="seconds per step, for --minutes")
    p.add_argument("--train-minutes", type=float, help="wall-clock cap on training: after M minutes the run is sent "
                   "SIGUSR1 (the loop checkpoints at the step boundary and stops; --steps stays the upper bound)")
    p.add_argument("--val-n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="the held-out slice's permutation")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--G", type=int, help="completions per prompt (objective.num_generations)")
    p.add_argument("--kl", type=float, default=0.0, help="objective.beta (k3 KL to the adapter-free reference)")
    p.add_argument("--batch-size", type=int, help="prompts per step")
    p.add_argument("--max-new-tokens", type=int, help="training completions")
    p.add_argument("--eval-new-tokens", type=int, help="greedy answers of the held-out slice (before and after)")
    p.add_argument("--max-prompt-tokens", type=int, help="data.max_prompt_length (longer prompts are not used)")
    p.add_argument("--micro-batch-tokens", type=int, help="objective.micro_batch_tokens (bounds memory)")
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--format-weight", type=float, default=0.5, help="weight of the format reward (accuracy: 1.0)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--demo", choices=sorted(DEMOS), default="none",
                   help="demonstration turns in every prompt (data.example_turns): fewshot3 = DEMO_TURNS")
    p.add_argument("--skip-before", type=Path, help="reuse the before-training metrics of this result JSON "
                   "(same slice and decoding: checked)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "experiments" / "grpo_smollm2_pubmedqa")
    p.add_argument("--render", type=Path, help="only rewrite the .md and .png of this result JSON")
    p.add_argument("--tag", default=None, help="result file name suffix (default: the device)")
    a = p.parse_args(argv)
    for k, v in PRESETS[a.device].items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if a.minutes is not None:
        if not a.s_per_step:
            p.error("--minutes needs --s-per-step (from a --steps 2 smoke run)")
        a.steps = max(1, int(a.minutes * 60 / a.s_per_step))
    return a


def overrides(a, train: Path, val: Path) -> list[str]:
    ov = ["model=smollm2_135m", "data=pubmedqa", f"data.path={train}", "data.val_split=0",
          f"data.max_prompt_length={a.max_prompt_tokens}", f"data.batch_size={a.batch_size}",
          f"objective.num_generations={a.G}", f"objective.max_new_tokens={a.max_new_tokens}",
          f"objective.val_max_new_tokens={a.eval_new_tokens}", f"objective.lr={a.lr}", f"objective.beta={a.kl}",
          f"objective.temperature={a.temperature}", f"objective.micro_batch_tokens={a.micro_batch_tokens}",
          f"objective.rewards.format.weight={a.format_weight}", f"adapter.r={a.lora_r}", f"adapter.alpha={2 * a.lora_r}",
          f"model.dtype={a.dtype}", f"trainer.max_steps={a.steps}", f"trainer.ckpt_every_n_steps={a.steps}",
          "trainer.val_every_n_steps=null", "trainer.log_every_n_steps=1", "trainer.progress_bar=false",
          "trainer.monitor=train/reward", "trainer.monitor_mode=max", "logger=csv", "export.enabled=false"]
    if a.device == "cuda":
        ov += ["strategy.precision=bf16-mixed"]
    return ov


def with_demo(cfg, a, tokenizer) -> int:
    """Put ``--demo``'s turns into ``cfg.data.example_turns``; ``data.max_prompt_length`` grows by their tokens
    (so the same rows fit). Returns that token count (0 without a demo)."""
    from omegaconf import OmegaConf, open_dict

    from medlab.evaluation import prompt_data_for

    turns = DEMOS[a.demo]
    if not turns:
        return 0
    with open_dict(cfg):
        cfg.data.example_turns = OmegaConf.create(turns)
    pd = prompt_data_for(cfg, {"path": str(DATA)})
    row = {"question": "q"}
    n = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    extra = n(pd.render(row, tokenizer=tokenizer)) - n(without_demo(pd).render(row, tokenizer=tokenizer))
    cfg.data.max_prompt_length = a.max_prompt_tokens + extra
    return extra


def without_demo(pd):
    """A copy of a `PromptData` without its demonstration turns."""
    import copy

    out = copy.copy(pd)
    out.example_turns = None
    return out


def split(cfg, tokenizer, out: Path, val_n: int, seed: int, max_prompt_tokens: int) -> tuple[Path, Path, dict]:
    """Rows whose prompt (rendered as in training, without demonstration turns) fits ``max_prompt_tokens``,
    permuted with ``seed``: ``val_n`` to val.jsonl, the rest to train.jsonl (the source lines unchanged)."""
    from medlab.evaluation import prompt_data_for

    pd = without_demo(prompt_data_for(cfg, {"path": str(DATA)}))
    pd.max_prompt_length = max_prompt_tokens
    pd.setup(tokenizer)
    fits = {str(e["fields"].get("id")) for e in pd.train_dataset}
    lines = [line for line in DATA.read_text(encoding="utf-8").split("\n") if line.strip()]
    usable = [line for line in lines if str(json.loads(line).get("id")) in fits]
    order = list(range(len(usable)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:val_n])
    (out / "data").mkdir(parents=True, exist_ok=True)
    train_p, val_p = out / "data" / "train.jsonl", out / "data" / "val.jsonl"
    val_p.write_text("".join(usable[i] + "\n" for i in sorted(val_idx)), encoding="utf-8")
    train_p.write_text("".join(usable[i] + "\n" for i in range(len(usable)) if i not in val_idx), encoding="utf-8")
    gold = [json.loads(usable[i])["answer"] for i in sorted(val_idx)]
    counts = {"rows": len(lines), "fit_prompt": len(usable), "train": len(usable) - len(val_idx), "val": len(val_idx),
              "val_ids": [json.loads(usable[i]).get("id") for i in sorted(val_idx)],
              "val_gold_shares": {k: gold.count(k) / len(gold) for k in sorted(set(gold))}}
    return train_p, val_p, counts


def evaluate(module, cfg, val: Path, a, samples_path: Path) -> dict:
    from medlab.evaluation import evaluate_qa

    t0 = time.perf_counter()
    records: list = []
    m = evaluate_qa(module, cfg, {"path": str(val)}, batch_size=a.eval_batch_size,
                    max_new_tokens=a.eval_new_tokens, samples=records)
    samples_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    preds = [label(r["prediction"]) for r in records]
    common = max(set(preds), key=preds.count) if preds else ""
    return {"accuracy": m["accuracy"], "format_failure_rate": m["format_failure_rate"],
            "num_questions": m["num_questions"], "mean_completion_tokens": m["mean_completion_tokens"],
            "max_new_tokens": m["max_new_tokens"], "commonest_prediction": [common, preds.count(common) / len(preds)],
            "seconds": round(time.perf_counter() - t0, 1)}


def label(prediction) -> str:
    """The first yes / no / maybe word of an extracted answer ("other" if none): what the model answered."""
    m = re.search(r"\b(yes|no|maybe)\b", str(prediction).lower())
    return m.group(1) if m else "other"


def read_curve(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    keep = ("step", "train/reward", "train/reward_std", "train/rewards/accuracy/mean", "train/rewards/format/mean",
            "train/completion_length", "train/loss", "train/time/generate_s", "train/time/update_s", "train/frac_reward_zero_std")
    rows = []
    with path.open() as f:
        for r in csv.DictReader(f):
            if r.get("train/reward") not in (None, ""):
                rows.append({k: float(r[k]) for k in keep if r.get(k) not in (None, "")})
    return rows


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.render:
        report = json.loads(a.render.read_text())
        a.render.with_suffix(".md").write_text(table(report) + "\n")
        plot(report, a.render.with_suffix(".png"))
        print(table(report))
        return
    torch.set_num_threads(1 if a.device == "cpu" else torch.get_num_threads())
    import medlab
    from medlab.evaluation import load_module, load_run

    out = a.out / _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    train, val = out / "data" / "train.jsonl", out / "data" / "val.jsonl"
    cfg = medlab.compose("grpo_lora", overrides(a, train, val), run_dir=str(out / "run"))
    t_load = time.perf_counter()
    base = load_module(cfg, None, checkpoint=None, device=a.device)
    demo_tokens = with_demo(cfg, a, base.module.tokenizer)
    print(f"demo: {a.demo} (+{demo_tokens} prompt tokens; data.max_prompt_length {cfg.data.max_prompt_length})",
          flush=True)
    train, val, counts = split(cfg, base.module.tokenizer, out, a.val_n, a.seed, a.max_prompt_tokens)
    counts["demo_tokens"] = demo_tokens
    print(f"split: {json.dumps({k: v for k, v in counts.items() if k != 'val_ids'})}", flush=True)
    if a.skip_before:
        prev = json.loads(a.skip_before.read_text())
        assert prev["split"]["val_ids"] == counts["val_ids"] and prev["before"]["max_new_tokens"] == a.eval_new_tokens \
            and prev["settings"].get("demo", "none") == a.demo, f"{a.skip_before}: another held-out slice, decoding or demo"
        before = prev["before"]
    else:
        before = evaluate(base.module, cfg, val, a, out / "before_samples.jsonl")
    print(f"before: {json.dumps(before)}", flush=True)
    del base
    t0 = time.perf_counter()
    timer = None
    if a.train_minutes:  # the loop's own signal handling: checkpoint at the next step boundary, then stop
        import os
        import signal
        import threading

        signal.signal(signal.SIGUSR1, lambda *_: None)  # outside the loop (which installs its own): ignored
        timer = threading.Timer(a.train_minutes * 60, os.kill, (os.getpid(), signal.SIGUSR1))
        timer.daemon = True
        timer.start()
    result = medlab.run(cfg)
    if timer is not None:
        timer.cancel()
    train_s = time.perf_counter() - t0
    run_dir = Path(result.run_dir)
    loaded = load_run(str(run_dir), checkpoint="latest", device=a.device)
    after = evaluate(loaded.module, loaded.cfg, val, a, out / "after_samples.jsonl")
    print(f"after: {json.dumps(after)}", flush=True)
    curve = read_curve(run_dir)
    steps_done = int(max((r["step"] for r in curve), default=a.steps))
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
              "split": counts, "before": before, "after": after, "curve": curve,
              "train_seconds": round(train_s, 1), "steps": steps_done,
              "seconds_per_step": round(train_s / max(steps_done, 1), 1),
              "goal_reached": after["accuracy"] >= before["accuracy"] + 0.10
              and after["format_failure_rate"] <= before["format_failure_rate"],
              "machine": machine(a.device), "command": command(), "run_dir": str(run_dir),
              "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "load_seconds": round(t0 - t_load, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"grpo_smollm2_pubmedqa_{a.tag or a.device}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(table(report) + "\n")
    plot(report, stem.with_suffix(".png"))
    print(table(report))


def machine(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")


def command() -> str:
    return "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/rl/grpo_smollm2_pubmedqa.py " + " ".join(sys.argv[1:])


def table(r: dict) -> str:
    s, b, f = r["settings"], r["before"], r["after"]
    rows = [f"| held-out slice ({b['num_questions']} PubMedQA questions) | accuracy (exact match) | format-failure rate "
            "| commonest answer | mean completion tokens | eval seconds |", "|---|---|---|---|---|---|"]
    demo = s.get("demo", "none")
    shot = "zero-shot" if demo == "none" else f"untrained, {demo} prompt"
    for name, m in ((f"before ({shot}, greedy)", b), (f"after {r['steps']} GRPO steps (greedy)", f)):
        rows.append(f"| {name} | {m['accuracy']:.3f} | {m['format_failure_rate']:.3f} | "
                    f"{m['commonest_prediction'][0]!r} ({m['commonest_prediction'][1]:.2f}) | "
                    f"{m['mean_completion_tokens']:.1f} | {m['seconds']:.0f} |")
    shares = ", ".join(f"{k} {v:.2f}" for k, v in r["split"]["val_gold_shares"].items())
    major, share = max(r["split"]["val_gold_shares"].items(), key=lambda kv: kv[1])
    rows.append(f"| always answering {major!r} (majority class of the slice) | {share:.3f} | - | - | - | - |")
    rows += ["", f"Settings: {r['steps']} steps x {s['batch_size']} prompts x G {s['G']}, lr {s['lr']}, KL beta "
             f"{s['kl']}, LoRA r {s['lora_r']}, rewards exact_match 1.0 + format {s['format_weight']}, temperature "
             f"{s['temperature']}, {s['max_new_tokens']} new tokens (train) / {s['eval_new_tokens']} (eval), prompts "
             f"<= {s['max_prompt_tokens']} tokens"
             + (f" + {r['split'].get('demo_tokens')} of demonstration turns ({demo})" if demo != "none" else "")
             + f", micro_batch_tokens {s['micro_batch_tokens']}; "
             f"{r['split']['train']} training questions; gold shares on the slice: {shares}.",
             f"Training {r['train_seconds']:.0f} s = **{r['seconds_per_step']:.0f} s/step** on {r['machine']} "
             f"({s['device']}); {r['date']}. Goal (accuracy >= zero-shot + 0.10, format failures not higher): "
             f"**{'reached' if r['goal_reached'] else 'not reached'}**"
             + (f", but by answering {f['commonest_prediction'][0]!r} to every question: no better than the "
                "majority class" if f["commonest_prediction"][1] >= 0.95 and f["accuracy"] <= share + 0.005 else "")
             + ".", "", f"`{r['command']}`"]
    return "\n".join(rows)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    c = r["curve"]
    steps = [x["step"] for x in c]
    for key, label in (("train/reward", "total reward"), ("train/rewards/accuracy/mean", "exact match"),
                       ("train/rewards/format/mean", "format")):
        ys = [x.get(key, float("nan")) for x in c]
        if c:
            ax1.plot(steps, ys, marker="o", ms=3, label=label)
    ax1.set(xlabel="step", ylabel="mean over the step's completions", title="GRPO training rewards")
    ax1.legend()
    names = ["accuracy", "format failures"]
    b = [r["before"]["accuracy"], r["before"]["format_failure_rate"]]
    f = [r["after"]["accuracy"], r["after"]["format_failure_rate"]]
    x = range(len(names))
    demo = r["settings"].get("demo", "none")
    ax2.bar([i - 0.2 for i in x], b, 0.4, label="before (zero-shot)" if demo == "none" else f"before ({demo})")
    ax2.bar([i + 0.2 for i in x], f, 0.4, label=f"after {r['steps']} steps")
    ax2.set_xticks(list(x), names)
    major, share = max(r["split"]["val_gold_shares"].items(), key=lambda kv: kv[1])
    ax2.axhline(share, color="grey", ls="--", lw=1, label=f"always {major!r}")
    ax2.set(ylim=(0, 1), title=f"held-out slice (n={r['before']['num_questions']}, greedy)")
    ax2.legend()
    fig.suptitle("SmolLM2-135M-Instruct + LoRA, GRPO on PubMedQA")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
