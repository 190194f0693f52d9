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

from pathlib import Path

import _pref_pairs as bench

SECTION = "## DPO vs TRL DPOTrainer"


def trl_child(spec_path: str, result: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    spec, rows, tok = bench.load_spec(spec_path)
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    args = DPOConfig(**bench.trl_args(spec), beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=False)
    data = Dataset.from_list([{"prompt_ids": r["prompt_ids"], "chosen_ids": r["chosen_ids"],
                               "rejected_ids": r["rejected_ids"]} for r in rows])
    bench.train_timed(lambda callbacks: bench.pretokenized(DPOTrainer)(
        model=model, args=args, train_dataset=data, processing_class=tok,
        peft_config=bench.lora_config(spec, "CAUSAL_LM"), callbacks=callbacks), result)


def medlab_head(a, adapter: str, mdir: Path) -> list[str]:
    model = ["model=smollm2_135m"] if a.model == "smollm2" else ["model=local_hf", f"model.path={mdir}",
                                                                   "model.dtype=float32"]
    return [f"+experiment={'dpo_lora' if adapter == 'lora' else 'dpo'}", *model, "objective.beta=0.1"]


if __name__ == "__main__":
    bench.main(script=__file__, description=__doc__.split("\n\n")[0], section=SECTION, default_adapter="lora",
               trl_child=trl_child, model_dir=bench.base_model_dir, medlab_head=medlab_head)
