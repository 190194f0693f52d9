"""A trained reward-model run as an RL reward: ``rewards: {rm: {_target_: reward_model, run_dir: RUN}}``.

The run (``objective=reward_model``) is loaded once, lazily, with its best checkpoint (``checkpoint: best |
latest | PATH``) through the run loader the caller hands down (``bind_run_loader``: the runner binds
``medlab.evaluation.load_run`` into GRPO, which passes it on to its rewards), so ``medlab.rl`` never imports the
layers above it. Each (prompt, completion) is encoded exactly as the reward model was trained: the prompt rendered
once with the run's chat template (or a text pair for encoders), the completion as the assistant turn ending with
its end-of-turn token; the reward is the model's scalar at the last real token.

The prompt scored is the row's ``prompt_field`` (default ``question``: the user's question, without the policy's
own instructions), else the prompt the policy saw (a string = one user turn, or a list of chat messages).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medlab.data.preference_encode import PreferenceEncoder, batch_of, resolve_encoding
from medlab.data.templates import get_template

log = logging.getLogger(__name__)


class RewardModelReward:
    """A callable reward ``(prompts, completions, **fields) -> list[float]`` backed by a reward-model run.

    Args:
        run_dir: the reward model's run directory.
        checkpoint: ``best`` (by the run's monitor), ``latest`` or a checkpoint path.
        batch_size: sequences per forward pass.
        prompt_field: the row field holding the question to score against (null = the policy's prompt).
        max_length: token limit (default: the run's ``data.max_length``); prompts are cut from the left first.
        device: where the reward model runs (default: CUDA when available).
    """

    def __init__(self, run_dir: str, checkpoint: str = "best", batch_size: int = 16,
                 prompt_field: str | None = "question", max_length: int | None = None, device: str | None = None,
                 load_run: Any = None):
        path = Path(str(run_dir)).expanduser()
        if not (path / "config_resolved.yaml").is_file():
            raise ValueError(f"reward_model: run_dir={run_dir} is not a medlab run directory (no config_resolved.yaml)")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"reward_model: batch_size must be a positive integer, got {batch_size!r}")
        self.run_dir, self.checkpoint, self.batch_size = str(path), checkpoint, batch_size
        self.prompt_field, self.max_length, self.device = prompt_field, max_length, device
        self.load_run = load_run
        self._loaded: tuple[Any, PreferenceEncoder, int] | None = None

    def bind_run_loader(self, load_run: Any) -> None:
        """``medlab.contracts.UsesRuns``: how to load the reward-model run."""
        self.load_run = load_run

    def _model(self) -> tuple[Any, PreferenceEncoder, int]:
        if self._loaded is None:
            if self.load_run is None:
                raise RuntimeError("reward_model needs a run loader: bind_run_loader(medlab.evaluation.load_run) "
                                   "(the training runner binds it for GRPO)")
            cfg, module, choice = self.load_run(self.run_dir, checkpoint=self.checkpoint, device=self.device)
            if getattr(type(module), "eval_task", None) != "preference" or not hasattr(module, "rewards"):
                raise ValueError(f"reward_model: {self.run_dir} is a {type(module).__name__} run, not a reward model "
                                 "(objective=reward_model)")
            tok = module.tokenizer
            data = cfg.data
            encoding = resolve_encoding(str(data.get("encoding", "auto")), tok)
            template = get_template(str(data.get("template", "chatml")), tok) if encoding == "chat" else None
            encoder = PreferenceEncoder(tok, template, int(self.max_length or data.get("max_length") or 512),
                                        data.get("max_prompt_length"), int(data.get("min_prompt_length") or 8),
                                        bool(data.get("pair_sides")))
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            log.info("reward_model: scoring with %s (%s)", self.run_dir, choice)
            self._loaded = (module, encoder, pad)
        return self._loaded

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **fields: Any) -> list[float | None]:
        module, encoder, pad = self._model()
        questions = fields.get(self.prompt_field) if self.prompt_field else None
        pairs, whole = [], []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            question = questions[i] if questions is not None and questions[i] else prompt
            messages = _messages(question, "user")
            text, prompt_ids = encoder.prompt(messages)
            completion_ids = encoder.completion(messages, text, _messages(completion, "assistant"))
            whole.append((prompt_ids, completion_ids))  # pair_sides: each text alone, untruncated
            prompt_ids, (completion_ids,), _ = encoder.fit(prompt_ids, [completion_ids])
            pairs.append((prompt_ids, completion_ids))
        out: list[float | None] = []
        device = next(module.parameters()).device
        with torch.no_grad():
            for start in range(0, len(pairs), self.batch_size):
                batch = batch_of(encoder, pairs[start:start + self.batch_size], pad, "right",
                                 sides=whole[start:start + self.batch_size])
                batch = {k: v.to(device) for k, v in batch.items()}
                out += [float(r) for r in module.rewards(batch).tolist()]
        return out


def _messages(value: Any, role: str) -> list[dict]:
    """A prompt/completion as chat messages: a string is one ``role`` turn; a message list is kept."""
    if isinstance(value, str):
        return [{"role": role, "content": value, "tool_calls": []}]
    if isinstance(value, Sequence) and value and all(isinstance(m, Mapping) for m in value):
        return [{"role": m["role"], "content": str(m.get("content") or ""), "tool_calls": []} for m in value]
    raise TypeError(f"reward_model: cannot score a {type(value).__name__} (a string or chat messages)")
