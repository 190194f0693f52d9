"""Agentic RAG rollouts for GRPO: the policy decides when and what to search, reads the results, answers.

``objective.tools`` (see ``conf/experiment/agentic_rag.yaml``) names the tools; each search tool is a
`medlab.rl.search.SearchIndex` over a corpus, embedded by a bi-encoder run (``run_dir``; ``null`` = the
untrained backbone chosen by ``overrides``), optionally reranked by a cross-encoder run::

    tools:
      search_text: {corpus: {path: pubmedqa.jsonl, field: contexts, id_field: id}, run_dir: RUN, k: 3}
      search_image: {corpus: {path: captions.jsonl, field: caption, image_field: image}, run_dir: VLM_RUN}

`agentic_rollouts` runs the multi-turn tool loop (`medlab.rl.tools.run_tool_loop`) for a prompt batch and
returns what `GRPOPolicy` needs: padded token tensors with the loss mask (policy tokens only; observations
masked), each rollout's final answer text, and per-rollout fields for the rewards -- ``retrieved`` (texts of
the passages the policy was shown), ``num_tool_calls``, ``num_malformed`` -- plus loop statistics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medlab.rl.search import Passage, SearchIndex, corpus_from_rows, observed_ids, search_tool
from medlab.rl.tools import Tool, collate_tool_rollouts, run_tool_loop

log = logging.getLogger(__name__)


def build_tools(config: Mapping[str, Mapping[str, Any]], load_run: Any = None
                ) -> tuple[dict[str, Tool], dict[str, Passage]]:
    """Tools from ``objective.tools``; also every indexed passage by id (to turn observed ids into texts).
    ``load_run`` loads the bi-encoder / reranker runs the search tools use (``medlab.evaluation.load_run``,
    handed down by the runner: medlab.rl does not import the layers above it)."""
    from medlab.data.readers import read_records

    tools: dict[str, Tool] = {}
    passages: dict[str, Passage] = {}
    for name, spec in config.items():
        spec = dict(spec)
        corpus = dict(spec.get("corpus") or {})
        if not corpus.get("path"):
            raise ValueError(f"objective.tools.{name}.corpus.path is required (a file whose rows hold the passages)")
        rows = read_records(corpus["path"]).to_list()
        found, _ = corpus_from_rows(rows, corpus.get("field", "contexts"), corpus.get("id_field", "id"))
        if corpus.get("image_field"):
            images = {str(r.get(corpus.get("id_field", "id"), i)): r.get(corpus["image_field"]) for i, r in enumerate(rows)}
            found = [Passage(p.id, p.text, images.get(p.id.rsplit("-", 1)[0])) for p in found]
        if corpus.get("limit"):
            found = found[: int(corpus["limit"])]
        index = SearchIndex.from_run(spec.get("run_dir"), found, load_run=load_run,
                                     overrides=list(spec.get("overrides") or []),
                                     reranker_run=spec.get("reranker_run"),
                                     rerank_depth=int(spec.get("rerank_depth", 20)))
        tools[name] = search_tool(index, name, k=int(spec.get("k", 3)), max_chars=int(spec.get("max_chars", 400)))
        tools[name].timeout_s = spec.get("timeout_s", tools[name].timeout_s)  # null: no limit
        passages.update({p.id: p for p in found})
        log.info("tool %s: %d passages from %s", name, len(found), corpus["path"])
    return tools, passages


@dataclass
class AgentRollout:
    """Tensors + metadata in the shape `GRPOPolicy` micro-batches (``Rollout``-compatible attributes)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor  # attention: every real token, observations included
    loss_mask: torch.Tensor        # policy-generated tokens only
    completion_lengths: torch.Tensor
    is_truncated: torch.Tensor
    texts: list[str]
    seconds: float
    tokens_per_s: float
    logprobs: torch.Tensor | None = None  # [N,C] behaviour log-probs of the policy tokens, 0 on observations

    @property
    def num_rows(self) -> int:
        return self.prompt_ids.shape[0]


def agentic_rollouts(engine, tokenizer, messages: Sequence[list[dict]], tools: Mapping[str, Tool],
                     passages: Mapping[str, Passage], *, num_generations: int, max_turns: int,
                     max_total_tokens: int | None, device, **generation: Any) -> tuple[AgentRollout, dict, dict]:
    """Run the tool loop for every chat (G rollouts each); returns (rollout, reward fields, statistics)."""
    t0 = time.perf_counter()
    rollouts = run_tool_loop(engine, tokenizer, list(messages), tools, num_generations=num_generations,
                             max_turns=max_turns, max_total_tokens=max_total_tokens, **generation)
    seconds = time.perf_counter() - t0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    t = collate_tool_rollouts(rollouts, pad, device)
    lengths = t["completion_mask"].sum(1)
    generated = int(t["loss_mask"].sum())
    ro = AgentRollout(t["prompt_ids"], t["prompt_mask"], t["completion_ids"], t["completion_mask"], t["loss_mask"],
                      lengths, torch.tensor([r.is_truncated or r.hit_turn_limit for r in rollouts]),
                      [_final_answer(r) for r in rollouts], seconds, generated / max(seconds, 1e-9),
                      t.get("logprobs"))
    seen = [observed_ids(r.tool_calls) for r in rollouts]
    fields = {"retrieved": [[passages[i].text for i in ids if i in passages] for ids in seen],
              "retrieved_ids": seen, "num_tool_calls": [len(r.tool_calls) for r in rollouts],
              "num_malformed": [r.num_malformed for r in rollouts]}
    n = max(len(rollouts), 1)
    stats = {"agent/turns": sum(r.num_turns for r in rollouts) / n,
             "agent/tool_calls": sum(len(r.tool_calls) for r in rollouts) / n,
             "agent/malformed_calls": sum(r.num_malformed for r in rollouts) / n,
             "agent/tool_errors": sum(r.num_tool_errors for r in rollouts) / n,
             "agent/turn_limit_frac": sum(r.hit_turn_limit for r in rollouts) / n,
             "agent/searched_frac": sum(bool(s) for s in seen) / n}
    return ro, fields, stats


def _final_answer(rollout) -> str:
    """The last assistant turn without special tokens (what the answer rewards score)."""
    text = rollout.final_text or ""
    for tok in ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>"):
        text = text.replace(tok, "")
    return text.strip()


def tool_format(prompts: list, completions: list, num_malformed: list | None = None,
                num_tool_calls: list | None = None, **_: Any) -> list[float]:
    """1.0 when every tool call of the rollout parsed and the final answer has an ``<answer>`` tag, else 0.0
    (the format reward of agentic rollouts: malformed tool calls are penalized, never fatal)."""
    from medlab.rl.rewards import format_reward

    answered = format_reward(prompts, completions, kind="answer")
    malformed = num_malformed or [0] * len(completions)
    return [float(a >= 1.0 and m == 0) for a, m in zip(answered, malformed)]
