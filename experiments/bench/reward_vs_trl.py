#!/usr/bin/env python
"""medlab reward model vs TRL ``RewardTrainer`` on the same model, pairs, batch, lengths and precision: tokens/s and
peak memory.

    .venv/bin/python experiments/bench/reward_vs_trl.py --model tiny --steps 4 --warmup 1 --no-append    # smoke
    nice -n 10 .venv/bin/python experiments/bench/reward_vs_trl.py --model smollm2 --adapter full --adapter lora \
        --steps 8 --warmup 2 --batch-size 4 --max-length 256 --repeats 2

What is held equal (the parent writes one pairs file and one token file; every run is its own process):

* Model: ``smollm2`` = SmolLM2-135M-Instruct (the HF dir medlab converts from its GGUF) or ``tiny`` (a random
  2-layer Llama over SmolLM2's vocabulary: framework overhead), with a one-logit score head initialised once
  (seed 0) and saved with it, so both sides load the same weights; fp32, sdpa attention, on the CPU (``--device cuda`` for a GPU).
* Pairs: real medical Chinese preference pairs (``../shared/data/preference/medicalgpt_medical_pairs_zh.jsonl``),
  only rows whose prompt + chosen and prompt + rejected fit ``--max-length``, exactly ``steps x batch`` of them, in
  file order on both sides (medlab ``trainer.shuffle=false``; TRL ``train_sampling_strategy=sequential``). The token
  ids are medlab's (``PreferenceData``: chatml prompt rendered once, completions ending with ``<|im_end|>``); TRL
  trains on exactly those sequences (``chosen_ids`` = prompt + chosen, ``rejected_ids`` = prompt + rejected, its
  dataset preparation skipped), so step k holds the same tokens on both sides.
* Objective: -log sigmoid(r_c - r_r), no margin, no centering; ``--adapter full`` or ``lora`` (the
  ``conf/adapter/lora.yaml`` targets, r 8, alpha 16, dropout 0, the score head trained in full: peft SEQ_CLS).
  AdamW (fused where torch has it, both sides), constant lr, no warm-up, grad clip 1.0, no gradient checkpointing,
  no evaluation, no checkpoints, batch ``--batch-size`` pairs, accumulation 1. Padding: each side its default --
  TRL pads the 2B rows to the longest one; medlab regroups them by length into forwards padded by at most 10%
  (``objective.max_padding=0.1``; ``--medlab-max-padding null``: one padded forward too).
* One process per run, frameworks alternating (ABBA) over ``--repeats``; ``OMP_NUM_THREADS=--threads``.

Measured (the first ``--warmup`` steps excluded): step time (medlab: from its per-step CSV log, tokens /
``train/tokens_per_sec``; TRL: ``on_step_end`` -> ``on_step_end`` of a callback; both include data loading);
tokens/s = the non-pad tokens of the timed steps (prompt + chosen + prompt + rejected, counted by the parent from
the ids both sides train on) / their summed step time; peak memory = the child's ``ru_maxrss`` (CPU) or
``torch.cuda.max_memory_allocated`` (GPU); the step-1 loss of both sides.
"""

from __future__ import annotations

from pathlib import Path

import _pref_pairs as bench

SECTION = "## Reward model vs TRL RewardTrainer"


def trl_child(spec_path: str, result: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    spec, rows, tok = bench.load_spec(spec_path)
    model = AutoModelForSequenceClassification.from_pretrained(spec["model_dir"], num_labels=1, dtype=torch.float32,
                                                               attn_implementation="sdpa")
    model.config.pad_token_id = tok.pad_token_id
    args = RewardConfig(**bench.trl_args(spec), center_rewards_coefficient=None)
    data = Dataset.from_list([{"chosen_ids": r["prompt_ids"] + r["chosen_ids"],
                               "rejected_ids": r["prompt_ids"] + r["rejected_ids"]} for r in rows])
    bench.train_timed(lambda callbacks: bench.pretokenized(RewardTrainer)(
        model=model, args=args, train_dataset=data, processing_class=tok,
        peft_config=bench.lora_config(spec, "SEQ_CLS"), callbacks=callbacks), result)


def model_dir(kind: str, work: Path) -> Path:
    """The backbone with its one-logit score head already initialised (seed 0), saved once: both sides load the
    same weights, head included."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = bench.base_model_dir(kind, work)
    out = work / f"{kind}_score"
    if not (out / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(str(base))
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1, dtype=torch.float32)
        if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
            # SmolLM2 pads with <|im_end|>, the token every completion ends with: TRL's (transformers') pooling, which
            # looks for the last non-pad token, would read the token before it; medlab reads the last real token
            # from the mask. A distinct pad token makes both read the same token (and the step-1 losses equal).
            tok.pad_token = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() else tok.unk_token
        model.config.pad_token_id = tok.pad_token_id
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return out



def medlab_head(a, adapter: str, mdir: Path) -> list[str]:
    return ["+experiment=reward_model", "model=local_hf", f"model.path={mdir}", "model.dtype=float32",  # backbone + head
            "objective.use_margin=false", f"adapter={'lora' if adapter == 'lora' else 'none'}"]


if __name__ == "__main__":
    bench.main(script=__file__, description=__doc__.split("\n\n")[0], section=SECTION, default_adapter="full",
               trl_child=trl_child, model_dir=model_dir, medlab_head=medlab_head)
