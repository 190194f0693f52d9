"""Chunked linear cross-entropy (objective.loss_impl=chunked): equal to the plain loss, without [N,V] logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medlab.ops import linear_ce
from medlab.objectives.causal_lm import CausalLM
from tests.helpers import pad_collate, tiny_llama, toy_examples


@pytest.mark.parametrize("chunk", [1, 7, None])
@pytest.mark.parametrize("with_bias", [False, True])
def test_loss_and_grads_equal_plain_cross_entropy(chunk, with_bias):
    torch.manual_seed(0)
    N, H, V = 50, 16, 37
    h = torch.randn(N, H, requires_grad=True)
    w = torch.randn(V, H, requires_grad=True)
    b = torch.randn(V, requires_grad=True) if with_bias else None
    y = torch.randint(0, V, (N,))
    y[::4] = -100
    params = [h, w] + ([b] if with_bias else [])
    got = linear_ce.linear_cross_entropy(h, w, y, b, chunk)
    ref = F.cross_entropy(F.linear(h, w, b), y, reduction="sum", ignore_index=-100)
    g_got = torch.autograd.grad(got * 0.37, params)  # backward scales by the incoming gradient
    g_ref = torch.autograd.grad(ref * 0.37, params)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-4)
    for a, r in zip(g_got, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    nll, hits = linear_ce.linear_cross_entropy_stats(h, w, y, b, chunk)
    torch.testing.assert_close(nll, ref.detach(), rtol=1e-6, atol=1e-4)
    logits = F.linear(h, w, b)
    assert int(hits) == int(((logits.argmax(-1) == y) & (y != -100)).sum())


def test_frozen_weight_gets_no_gradient_and_all_ignored_gives_zero():
    h = torch.randn(6, 4, requires_grad=True)
    w = torch.randn(9, 4)  # frozen (LoRA: the head is not trained)
    y = torch.tensor([1, 2, -100, 3, 4, 5])
    loss = linear_ce.linear_cross_entropy(h, w, y, chunk_size=2)
    loss.backward()
    assert w.grad is None and h.grad is not None and h.grad[2].abs().sum() == 0
    empty = linear_ce.linear_cross_entropy(h, torch.randn(9, 4, requires_grad=True), torch.full((6,), -100))
    assert float(empty.detach()) == 0.0
    empty.backward()  # a zero gradient, never NaN


def _module(impl: str, **kw) -> CausalLM:
    return CausalLM(tiny_llama(vocab=512, hidden=32), mode="sft", loss_impl=impl, **kw)


def _grads(module: CausalLM, batch: dict) -> tuple[torch.Tensor, dict]:
    module.model.zero_grad(set_to_none=True)
    loss = module.training_step(batch, 0)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("with_index", [True, False])
def test_causal_lm_chunked_equals_full_logits_path(with_index):
    """Full fine-tune of a tied-embedding Llama: same loss and same gradient on every parameter, whether the
    labelled rows are picked by the collator's ``loss_index`` or masked inside the loss."""
    from medlab.data.collate import collate_padded

    batch = collate_padded(toy_examples(6, vocab=512), pad_id=0)
    assert len(batch["loss_index"]) == batch["num_label_tokens"]
    if not with_index:
        del batch["loss_index"]
    full, chunked = _module("full"), _module("chunked", loss_chunk_size=5)
    chunked.model.load_state_dict(full.model.state_dict())
    loss_f, grads_f = _grads(full, batch)
    loss_c, grads_c = _grads(chunked, batch)
    torch.testing.assert_close(loss_c, loss_f, rtol=1e-6, atol=1e-6)
    assert grads_f.keys() == grads_c.keys() and "model.embed_tokens.weight" in grads_c
    for name in grads_f:
        torch.testing.assert_close(grads_c[name], grads_f[name], rtol=1e-5, atol=1e-6, msg=name)
    val_f, val_c = full.validation_step(batch, 0), chunked.validation_step(batch, 0)
    torch.testing.assert_close(val_c["loss"], val_f["loss"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(val_c["token_acc"], val_f["token_acc"])


def test_causal_lm_chunked_with_lora_and_packed_rows():
    from peft import LoraConfig, get_peft_model

    from medlab.data.collate import collate_padding_free

    examples = toy_examples(5, vocab=512)
    batch = collate_padding_free(examples)
    modules = []
    for impl in ("full", "chunked"):
        torch.manual_seed(1)
        model = get_peft_model(tiny_llama(vocab=512, hidden=32),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        modules.append(CausalLM(model, mode="sft", loss_impl=impl))
    (loss_f, grads_f), (loss_c, grads_c) = (_grads(m, batch) for m in modules)
    torch.testing.assert_close(loss_c, loss_f, rtol=1e-6, atol=1e-6)
    assert grads_f.keys() == grads_c.keys() and all("lora" in n for n in grads_c)
    for name in grads_f:
        torch.testing.assert_close(grads_c[name], grads_f[name], rtol=1e-5, atol=1e-6, msg=name)


def test_chunked_path_never_saves_full_logits():
    """No tensor saved for backward holds more than one chunk of logits (the plain path saves [B,T,V])."""
    V, chunk = 512, 4
    batch = pad_collate(toy_examples(8, vocab=V))
    rows = int(batch["num_label_tokens"])
    assert rows > 32  # so the check below can tell a [rows,V] tensor from the [V,H] weight gradient

    def largest_saved(module: CausalLM) -> int:
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module.training_step(batch, 0)["loss"].backward()
        return max(sizes)

    assert largest_saved(_module("full")) >= rows * V
    assert largest_saved(_module("chunked", loss_chunk_size=chunk)) <= V * 32  # the head's own gradient [V,H]


def test_nonlinear_logits_fall_back_to_full_path(caplog):
    model = tiny_llama(vocab=512, hidden=32)
    model.config.final_logit_softcapping = 30.0
    parts, reason = linear_ce.lm_head_parts(model)
    assert parts is None and "final_logit_softcapping" in reason
    module = CausalLM(model, mode="sft", loss_impl="chunked")
    batch = pad_collate(toy_examples(3, vocab=512))
    with caplog.at_level("WARNING", logger="medlab"):
        loss = module.training_step(batch, 0)["loss"]
    assert "full-logits" in caplog.text
    from medlab.ops import losses

    torch.testing.assert_close(loss, losses.causal_lm_loss(module(batch), batch["labels"]))


def test_unknown_loss_impl_and_missing_liger_are_clear_errors():
    with pytest.raises(ValueError, match="loss_impl"):
        _module("fast")
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="liger-kernel"):
            _module("liger").on_fit_start()
