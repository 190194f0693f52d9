"""Preference losses (medlab.ops.preference_losses) against TRL 1.16 on identical inputs, and the chunked
per-token log-probs (medlab.ops.linear_logps) against full logits, values and gradients.

TRL's DPO and KTO losses live inside ``DPOTrainer._compute_loss`` / ``KTOTrainer._compute_loss``; they are run here
as written, with a stub model that returns given per-token log-probs (``fused_lm_head`` outputs) and a stub
trainer holding the loss settings, so the comparison covers TRL's own reductions, not a re-typed formula.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from medlab.ops.linear_logps import linear_token_logps
from medlab.ops.preference_losses import DPO_LOSS_TYPES, dpo_loss, kto_kl, kto_loss, orpo_loss

pytestmark = pytest.mark.usefixtures("one_thread")

B, T = 4, 9


class _StubLM(torch.nn.Module):
    """Returns fixed per-token log-probs (what TRL's fused LM head computes) for whatever it is called with."""

    def __init__(self, per_token_logps):
        super().__init__()
        self.per_token_logps = per_token_logps
        self.is_gradient_checkpointing = False

    def forward(self, input_ids=None, labels=None, **_):
        lp = self.per_token_logps[: input_ids.shape[0]]
        n = lp.shape[0]
        return SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=torch.zeros_like(lp),
                               is_top1=torch.zeros(n, lp.shape[1], dtype=torch.bool), aux_loss=None)


def _accelerator():
    same = lambda x: x  # noqa: E731
    return SimpleNamespace(device=torch.device("cpu"), gather=same, gather_for_metrics=same, unwrap_model=same)


def _paired_inputs(seed=0):
    """[2B, T] paired rows with per-token log-probs on completion tokens, and the reference's."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(2, 5, (B,), generator=g)
    length = torch.randint(2, T - 4, (2 * B,), generator=g)
    completion = torch.zeros(2 * B, T, dtype=torch.long)
    for i in range(2 * B):
        p = int(prompt[i % B])
        completion[i, p:p + int(length[i])] = 1
    attention = (torch.arange(T)[None] < (prompt.repeat(2) + length)[:, None]).long()
    shift = completion[:, 1:].float()
    policy = -torch.rand(2 * B, T - 1, generator=g, dtype=torch.float64).float() * 3 * shift
    ref = -torch.rand(2 * B, T - 1, generator=g, dtype=torch.float64).float() * 3 * shift
    return {"input_ids": torch.randint(0, 50, (2 * B, T), generator=g), "attention_mask": attention,
            "completion_mask": completion}, policy, ref


def _trl_dpo(loss_types, weights, beta, eps, inputs, policy, ref):
    from trl import DPOTrainer

    ref_logps = ref.sum(1)
    stub = SimpleNamespace(
        model=_StubLM(policy).train(), ref_model=None, accelerator=_accelerator(), f_divergence_type="reverse_kl",
        loss_types=loss_types, loss_weights=weights, beta=beta, label_smoothing=eps, use_weighting=False,
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, _total_train_tokens=0, _tp_size=1,
        _metrics=defaultdict(lambda: defaultdict(list)), args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    batch = {**inputs, "ref_chosen_logps": ref_logps[:B], "ref_rejected_logps": ref_logps[B:]}
    loss = DPOTrainer._compute_loss(stub, stub.model, batch, False)
    return loss, stub._metrics["train"]


@pytest.mark.parametrize("loss_types,weights", [(["sigmoid"], None), (["hinge"], None), (["ipo"], None),
                                                (["robust"], None), (["sigmoid", "ipo", "hinge"], [0.7, 0.2, 1.5]),
                                                (["robust", "sigmoid"], [1.0, 0.5])])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_types_equal_trl_dpotrainer(loss_types, weights, beta):
    inputs, policy, ref = _paired_inputs()
    eps = 0.2 if "robust" in loss_types else 0.0
    expected, metrics = _trl_dpo(loss_types, weights or [1.0] * len(loss_types), beta, eps, inputs, policy, ref)
    lengths = inputs["completion_mask"].sum(1)
    logps, ref_logps = policy.sum(1), ref.sum(1)
    loss, stats = dpo_loss(logps[:B], logps[B:], ref_logps[:B], ref_logps[B:], beta=beta, loss_types=loss_types,
                           loss_weights=weights, label_smoothing=eps, chosen_lengths=lengths[:B],
                           rejected_lengths=lengths[B:])
    assert loss.shape == (B,)
    assert abs(float(loss.mean()) - float(expected)) < 1e-6
    assert abs(float(stats["chosen_rewards"].mean()) - metrics["rewards/chosen"][0]) < 1e-6
    assert abs(float(stats["rejected_rewards"].mean()) - metrics["rewards/rejected"][0]) < 1e-6


def test_every_dpo_loss_type_is_compared_with_trl():
    assert set(DPO_LOSS_TYPES) == {"sigmoid", "hinge", "ipo", "robust", "simpo"}  # simpo: the CPO test below


def test_dpo_loss_is_ln2_when_policy_equals_reference():
    _, policy, _ = _paired_inputs()
    logps = policy.sum(1)
    loss, stats = dpo_loss(logps[:B], logps[B:], logps[:B].clone(), logps[B:].clone(), beta=0.1)
    assert torch.equal(loss, torch.full((B,), math.log(2)))
    assert torch.equal(stats["chosen_rewards"], torch.zeros(B))


def _cpo_stub(loss_type, beta, gamma, eps):
    return SimpleNamespace(alpha=0.0, loss_type=loss_type, beta=beta, simpo_gamma=gamma, label_smoothing=eps,
                           accelerator=_accelerator())


@pytest.mark.parametrize("beta,gamma,eps", [(2.0, 0.5, 0.0), (0.1, 1.2, 0.1)])
def test_simpo_equals_trl_cpotrainer_simpo(beta, gamma, eps):
    from trl.experimental.cpo import CPOTrainer

    inputs, policy, _ = _paired_inputs(1)
    lengths = inputs["completion_mask"].sum(1)
    avg = policy.sum(1) / lengths  # CPO's average_log_prob=True for simpo
    losses, c_rew, r_rew = CPOTrainer.cpo_loss(_cpo_stub("simpo", beta, gamma, eps), avg[:B], avg[B:])
    logps = policy.sum(1)
    loss, stats = dpo_loss(logps[:B], logps[B:], None, None, beta=beta, loss_types=["simpo"], simpo_gamma=gamma,
                           label_smoothing=eps, chosen_lengths=lengths[:B], rejected_lengths=lengths[B:])
    torch.testing.assert_close(loss, losses, rtol=0, atol=1e-6)
    torch.testing.assert_close(stats["chosen_rewards"], c_rew, rtol=0, atol=1e-6)
    torch.testing.assert_close(stats["rejected_rewards"], r_rew, rtol=0, atol=1e-6)


def test_simpo_combines_with_a_reference_loss():
    inputs, policy, ref = _paired_inputs(2)
    lengths = inputs["completion_mask"].sum(1)
    logps, ref_logps = policy.sum(1), ref.sum(1)
    args = (logps[:B], logps[B:], ref_logps[:B], ref_logps[B:])
    kw = dict(beta=0.3, chosen_lengths=lengths[:B], rejected_lengths=lengths[B:])
    both, _ = dpo_loss(*args, loss_types=["sigmoid", "simpo"], loss_weights=[0.25, 2.0], **kw)
    one, _ = dpo_loss(*args, loss_types=["sigmoid"], **kw)
    two, _ = dpo_loss(*args, loss_types=["simpo"], **kw)
    torch.testing.assert_close(both, 0.25 * one + 2.0 * two)


def test_dpo_loss_rejects_bad_settings():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="valid: sigmoid, hinge, ipo, robust, simpo"):
        dpo_loss(x, x, x, x, beta=0.1, loss_types=["sigmod"])
    with pytest.raises(ValueError, match="need the reference"):
        dpo_loss(x, x, None, None, beta=0.1, loss_types=["sigmoid"])
    with pytest.raises(ValueError, match="loss_weights"):
        dpo_loss(x, x, x, x, beta=0.1, loss_types=["sigmoid", "hinge"], loss_weights=[1.0])


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_equals_trl_orpotrainer(lam):
    from trl.experimental.orpo import ORPOTrainer

    g = torch.Generator().manual_seed(3)
    chosen = -torch.rand(6, generator=g) * 3 - 1e-3   # average per-token log-probs, both sides of -ln 2
    rejected = -torch.rand(6, generator=g) * 0.6 - 1e-4
    nll = torch.tensor(1.7)
    stub = SimpleNamespace(beta=lam, accelerator=_accelerator())
    losses, c_rew, r_rew, ratio, log_odds = ORPOTrainer.odds_ratio_loss(stub, chosen, rejected)
    expected = nll - losses.mean()  # ORPOTrainer.get_batch_loss_metrics: policy_nll_loss - losses.mean()
    loss, stats = orpo_loss(chosen, rejected, nll, lam)
    assert abs(float(loss.mean()) - float(expected)) < 1e-6
    assert abs(float(stats["log_odds"].mean()) - float(log_odds)) < 1e-6
    assert abs(float(stats["log_odds_ratio"].mean()) - float(ratio)) < 1e-6
    torch.testing.assert_close(stats["chosen_rewards"], c_rew)
    torch.testing.assert_close(stats["rejected_rewards"], r_rew)


def _trl_kto(beta, wd, wu, inputs, labels, policy, kl_policy, ref, kl_ref):
    from trl import KTOTrainer

    ref_model = _StubLM(ref)
    model = _StubLM(policy).train()
    kl_model_calls = {"policy": kl_policy, "ref": kl_ref}

    def kl_logps(m, batch):  # TRL's _compute_kl_logps: the same model on the KL rows
        return kl_model_calls["policy" if m is model else "ref"].sum(-1)

    stub = SimpleNamespace(
        model=model, ref_model=ref_model, accelerator=_accelerator(), loss_type="kto", beta=beta,
        desirable_weight=wd, undesirable_weight=wu, calculate_KL=True, aux_loss_enabled=False,
        precompute_ref_logps=False, _total_train_tokens=0, _tp_size=1, _compute_kl_logps=kl_logps,
        _metrics=defaultdict(lambda: defaultdict(list)), args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    batch = {**inputs, "label": labels, "KL_input_ids": inputs["input_ids"],
             "KL_attention_mask": inputs["attention_mask"], "KL_completion_mask": inputs["completion_mask"]}
    loss = KTOTrainer._compute_loss(stub, model, batch, False)
    return loss, stub._metrics["train"]


@pytest.mark.parametrize("beta,wd,wu", [(0.1, 1.0, 1.0), (0.5, 1.33, 0.8)])
def test_kto_equals_trl_ktotrainer(beta, wd, wu):
    inputs, policy, ref = _paired_inputs(4)  # 2B unpaired completions
    _, kl_policy, kl_ref = _paired_inputs(5)
    kl_policy = kl_policy * 0.5  # a positive KL estimate (policy above the reference on mismatched pairs)
    labels = torch.tensor([True, False, True, True, False, False, True, False])
    expected, metrics = _trl_kto(beta, wd, wu, inputs, labels, policy, kl_policy, ref, kl_ref)
    kl = kto_kl(kl_policy.sum(-1), kl_ref.sum(-1))
    assert float(kl) > 0 and abs(float(kl) - metrics["kl"][0]) < 1e-6
    loss, stats = kto_loss(policy.sum(-1), ref.sum(-1), labels, kl, beta=beta, desirable_weight=wd,
                           undesirable_weight=wu)
    assert abs(float(loss.mean()) - float(expected)) < 1e-6
    assert abs(float(stats["rewards"][labels].mean()) - metrics["rewards/chosen"][0]) < 1e-6
    assert abs(float(stats["rewards"][~labels].mean()) - metrics["rewards/rejected"][0]) < 1e-6


def test_kto_kl_is_detached_clamped_and_reduced_over_ranks():
    a = torch.tensor([-3.0, -2.0], requires_grad=True)
    kl = kto_kl(a, torch.tensor([-1.0, -1.0]))  # mean -1.5 -> clamped to 0
    assert float(kl) == 0.0 and not kl.requires_grad
    seen = []
    kl = kto_kl(torch.tensor([2.0]), torch.tensor([1.0]), lambda t: seen.append(t) or (t + 3.0) / 2)
    assert float(seen[0]) == 1.0 and float(kl) == 2.0  # (1 + 3) / 2: the other rank's 3.0 averaged in


@pytest.mark.parametrize("with_bias,train_head", [(False, False), (True, True), (False, True)])
def test_chunked_token_logps_equal_full_logits_values_and_gradients(with_bias, train_head):
    g = torch.Generator().manual_seed(0)
    n, h, v = 13, 8, 37
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64)
    bias = torch.randn(v, generator=g, dtype=torch.float64) if with_bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    targets[[2, 7]] = -100
    upstream = torch.randn(n, generator=g, dtype=torch.float64)

    def run(fn):
        hh = hidden.clone().requires_grad_(True)
        ww = weight.clone().requires_grad_(train_head)
        bb = bias.clone().requires_grad_(train_head) if bias is not None else None
        out = fn(hh, ww, bb)
        (out * upstream).sum().backward()
        return out, hh.grad, ww.grad, None if bb is None else bb.grad

    def full(hh, ww, bb):
        logits = hh @ ww.t() + (bb if bb is not None else 0)
        lp = torch.log_softmax(logits, -1).gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
        return lp * (targets != -100)

    ref = run(full)
    got = run(lambda hh, ww, bb: linear_token_logps(hh, ww, targets, bb, chunk_size=4))
    for a, b in zip(got, ref):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
    assert float(got[0][2].detach()) == 0.0 and float(got[1][7].abs().sum()) == 0.0
