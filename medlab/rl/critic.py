"""PPO's critic: a value head on a decoder, sharing the policy's frozen base under LoRA/QLoRA.

- **LoRA / QLoRA** (the policy is a peft model): the critic is a second peft adapter, ``"critic"`` (the policy
  adapter's config: same rank, targets, dropout), added to the policy's own model, plus a value head. One base
  lives in memory for three roles: the policy (adapter ``default`` active), the reference (adapters disabled)
  and the critic (adapter ``critic`` active, switched in only for the critic's forward). The critic adapter's
  weights are parameters of the policy model, so checkpoints (trainable weights by name) hold them, and the
  value head is a parameter of the objective: both are saved and restored with the run.
- **Full fine-tune**: a separate value model, a copy of the initial model's decoder (made when the objective is
  built, so also on resume it starts from the initial weights before the checkpoint restores it) + the head.

``V(s_t)`` for completion token t is the head on the decoder's last hidden state at the position that predicts
token t (the state before it is generated), the same alignment as the policy's log-probs
(:func:`medlab.rl.generation.sequence_logprobs`). Values are fp32, 0 where ``completion_mask`` is 0.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from medlab.rl.generation import _find_peft

CRITIC_ADAPTER = "critic"


def decoder_of(model: Any) -> nn.Module:
    """The decoder (the backbone without the LM head) of a transformers causal LM, peft-wrapped or not."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    if not isinstance(decoder, nn.Module) or decoder is inner:
        raise ValueError(f"the PPO critic needs a causal LM with a separate decoder module; "
                         f"{type(inner).__name__} has none")
    return decoder


class Critic(nn.Module):
    """``critic(prompt_ids, prompt_mask, completion_ids, completion_mask) -> values [N, C]``; see the module doc."""

    def __init__(self, model: nn.Module, *, init_std: float | None = None):
        super().__init__()
        peft = _find_peft(model)
        self._shared: list[Any] = []  # the policy's peft model (not a submodule: the objective owns it)
        self.backbone: nn.Module | None = None
        if peft is not None:
            config = copy.deepcopy(peft.peft_config[peft.active_adapter])
            config.modules_to_save = None  # the critic adapts the decoder only; its head is the value head
            config.inference_mode = False
            peft.add_adapter(CRITIC_ADAPTER, config)
            for name, p in peft.named_parameters():  # add_adapter leaves the inactive new adapter frozen
                if f".{CRITIC_ADAPTER}." in name:
                    p.requires_grad_(True)
            self._shared.append(peft)
        else:
            self.backbone = copy.deepcopy(decoder_of(model)).requires_grad_(True)
        config = getattr(model, "config", None)
        hidden = getattr(config, "hidden_size", None) or getattr(getattr(config, "text_config", None), "hidden_size")
        self.value_head = nn.Linear(int(hidden), 1)
        std = init_std if init_std is not None else float(getattr(config, "initializer_range", 0.02) or 0.02)
        with torch.no_grad():  # TRL's value model: a new sequence-classification score head, normal(0, std)
            self.value_head.weight.normal_(0.0, std)
            self.value_head.bias.zero_()

    @property
    def shares_base(self) -> bool:
        """True when the critic is an adapter on the policy's base (LoRA/QLoRA)."""
        return bool(self._shared)

    def adapter_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The critic adapter's parameters (named as in the policy model); empty for a full fine-tune."""
        if not self._shared:
            return []
        return [(n, p) for n, p in self._shared[0].named_parameters() if f".{CRITIC_ADAPTER}." in n]

    @contextlib.contextmanager
    def keep_trainable(self) -> Iterator[None]:
        """Every ``requires_grad`` flag of the shared peft model put back on exit. peft freezes the inactive
        adapters whenever it (re)activates one -- ``set_adapter``, and also the end of ``disable_adapter()`` (the
        reference pass) -- which would silently stop the critic adapter from training."""
        flags = [(p, p.requires_grad) for p in self._shared[0].parameters()] if self._shared else []
        try:
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    @contextlib.contextmanager
    def active(self) -> Iterator[nn.Module]:
        """The critic's decoder, ready for a forward: under peft the ``critic`` adapter is switched in for the
        duration (the ``requires_grad`` flags are put back after, :meth:`keep_trainable`)."""
        if not self._shared:
            yield self.backbone
            return
        peft = self._shared[0]
        previous = peft.active_adapter
        with self.keep_trainable():
            peft.set_adapter(CRITIC_ADAPTER)
            try:
                yield decoder_of(peft)
            finally:
                peft.set_adapter(previous)

    def forward(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                completion_mask: Tensor) -> Tensor:
        N, C = completion_ids.shape
        if C == 0:
            return torch.zeros(N, 0, device=completion_ids.device)
        ids = torch.cat([prompt_ids, completion_ids], 1)
        mask = torch.cat([prompt_mask, completion_mask], 1)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        with self.active() as decoder:
            hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                             use_cache=False).last_hidden_state
        hidden = hidden[:, -C - 1:-1]  # position t-1 holds the state before completion token t
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        return values * completion_mask.to(torch.float32)

    def release(self) -> None:
        """Drop the critic adapter from the policy model (after training: the export holds the policy alone)."""
        if self._shared and CRITIC_ADAPTER in self._shared[0].peft_config:
            self._shared[0].delete_adapter(CRITIC_ADAPTER)
