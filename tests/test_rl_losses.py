"""medlab.rl.losses against TRL 1.16's own GRPO loss code and a hand-written reference.

``grpo_loss`` is compared with ``trl.trainer.grpo_trainer.GRPOTrainer._compute_loss`` called as an unbound
method on a stub ``self`` that carries only the attributes it reads; the stub's
``_get_per_token_logps_and_entropies`` returns our fixed log-prob tensor (a leaf with requires_grad, so the
gradients of both losses can be compared too). The stub model is in eval mode, so TRL does not divide by
``current_gradient_accumulation_steps`` (medlab's loop does that scaling), and for "dapo" TRL's normalizer is
then ``num_items_in_batch`` = the batch's masked-token count.
"""

from __future__ import annotations

import types
from collections import defaultdict

import pytest
import torch

from medlab.rl.losses import grpo_loss, masked_mean, masked_sum, token_logprobs

B, T = 6, 7
TOL = 1e-6


def _inputs(seed: int = 0, off_policy: bool = True):
    g = torch.Generator().manual_seed(seed)
    logps = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 3).float()
    # mu > 1 style: old log-probs drift from the current ones by up to +-0.5 nats, so ratios leave [0.8, 1.28]
    old = logps + (torch.rand(B, T, generator=g) - 0.5) if off_policy else None
    ref = logps + (torch.rand(B, T, generator=g) - 0.5) * 0.6
    adv = torch.tensor([-0.9, -0.7, 0.0, 1.2, -0.6, 0.8])  # both signs, one zero
    lengths = torch.tensor([7, 3, 5, 1, 0, 6])  # one empty completion (all masked)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    return logps, old, ref, adv, mask


class _Acc:
    device = torch.device("cpu")
    num_processes = 1

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x


def _trl_loss(loss_type, logps, old, ref, adv, mask, *, beta, eps_low, eps_high, max_len=None):
    """TRL's loss on our tensors; returns (loss, grad w.r.t. logps, TRL's logged metrics)."""
    trl = pytest.importorskip("trl.trainer.grpo_trainer")
    leaf = logps.detach().clone().requires_grad_(True)
    s = types.SimpleNamespace(
        accelerator=_Acc(), model=torch.nn.Linear(1, 1).eval(), loss_type=loss_type, beta=beta,
        epsilon_low=eps_low, epsilon_high=eps_high if eps_high is not None else eps_low,
        max_completion_length=max_len, aux_loss_enabled=False, top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, importance_sampling_level="token", use_vllm=False,
        current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    s._get_per_token_logps_and_entropies = lambda *a, **k: (leaf, torch.zeros_like(leaf), None)
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "num_items_in_batch": mask.sum(),
    }
    if old is not None:
        inputs["old_per_token_logps"] = old
    if beta != 0.0:
        inputs["ref_per_token_logps"] = ref
    loss = trl.GRPOTrainer._compute_loss(s, None, inputs)
    loss.backward()
    return loss.detach(), leaf.grad, {k: v[-1] for k, v in s._metrics["eval"].items()}


def _ours(aggregation, logps, old, ref, adv, mask, **kw):
    leaf = logps.detach().clone().requires_grad_(True)
    loss, stats = grpo_loss(leaf, old, ref, adv, mask, aggregation=aggregation, **kw)
    loss.backward()
    return loss.detach(), leaf.grad, stats


CASES = [  # (medlab aggregation, TRL loss_type)
    ("sequence", "grpo"), ("token", "bnpo"), ("token", "dapo"), ("dr_grpo", "dr_grpo"),
]


@pytest.mark.parametrize(("aggregation", "loss_type"), CASES)
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize(("off_policy", "eps_high"), [(False, None), (True, None), (True, 0.28)])
def test_grpo_loss_equals_trl(aggregation, loss_type, beta, off_policy, eps_high):
    logps, old, ref, adv, mask = _inputs(off_policy=off_policy)
    kw = {"beta": beta, "eps_low": 0.2, "eps_high": eps_high}
    max_len = 10 if aggregation == "dr_grpo" else None
    loss, grad, stats = _ours(aggregation, logps, old, ref if beta else None, adv, mask,
                              max_completion_length=max_len, **kw)
    t_loss, t_grad, t_metrics = _trl_loss(loss_type, logps, old, ref, adv, mask, max_len=max_len, **kw)
    assert abs(float(loss) - float(t_loss)) <= TOL, (float(loss), float(t_loss))
    torch.testing.assert_close(grad, t_grad, atol=TOL, rtol=0)
    assert grad.abs().sum() > 0
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean") + (("kl",) if beta else ()):
        assert abs(float(stats[key]) - t_metrics[key]) <= TOL, key
    if off_policy:  # the fixture's drift really exercises both clips
        assert float(stats["clip_ratio/low_mean"]) > 0 and float(stats["clip_ratio/high_mean"]) > 0


def test_clip_higher_changes_the_loss():
    logps, old, _, adv, mask = _inputs()
    sym, _ = grpo_loss(logps, old, None, adv, mask, eps_low=0.2)
    higher, stats = grpo_loss(logps, old, None, adv, mask, eps_low=0.2, eps_high=0.28)
    assert float(higher) < float(sym)  # a positive-advantage token with ratio in (1.2, 1.28] gains more
    assert float(stats["clip_ratio/high_mean"]) > 0


def _reference(logps, old, ref, adv, mask, eps_low, eps_high, beta, aggregation, max_len):
    """Loop-based reference: every token, one at a time, as written in the GRPO / DAPO / Dr. GRPO papers."""
    total, seq_means, count = 0.0, [], 0
    for b in range(B):
        seq, n = 0.0, 0
        for t in range(T):
            if not mask[b, t]:
                continue
            r = torch.exp(logps[b, t] - old[b, t])
            surr = -torch.minimum(r * adv[b], torch.clamp(r, 1 - eps_low, 1 + eps_high) * adv[b])
            d = ref[b, t] - logps[b, t]
            seq = seq + surr + beta * (torch.exp(d) - d - 1)
            n += 1
        seq_means.append(seq / max(n, 1))
        total, count = total + seq, count + n
    if aggregation == "sequence":
        return sum(seq_means) / B
    return total / count if aggregation == "token" else total / (B * max_len)


@pytest.mark.parametrize("aggregation", ["sequence", "token", "dr_grpo"])
def test_gradient_matches_hand_written_reference(aggregation):
    logps, old, ref, adv, mask = _inputs(seed=3)
    a = logps.clone().requires_grad_(True)
    b = logps.clone().requires_grad_(True)
    kw = {"eps_low": 0.2, "eps_high": 0.3, "beta": 0.1}
    loss, _ = grpo_loss(a, old, ref, adv, mask, aggregation=aggregation, max_completion_length=9, **kw)
    expected = _reference(b, old, ref, adv, mask, kw["eps_low"], kw["eps_high"], kw["beta"], aggregation, 9)
    loss.backward()
    expected.backward()
    assert abs(loss.item() - expected.item()) <= TOL
    torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-5)
    assert (a.grad[mask == 0] == 0).all()


def test_on_policy_ratio_is_one_with_policy_gradient():
    """old_logps=None: loss = -mean A (ratio 1), and d loss / d logp = -A / n_b per token ("sequence")."""
    logps, _, _, adv, mask = _inputs()
    leaf = logps.clone().requires_grad_(True)
    loss, stats = grpo_loss(leaf, None, None, adv, mask)
    loss.backward()
    n = mask.sum(1).clamp(min=1)
    has = (mask.sum(1) > 0).float()
    assert abs(loss.item() + (adv * has).mean().item()) <= TOL
    torch.testing.assert_close(leaf.grad, (-adv / n / B)[:, None] * mask, atol=1e-7, rtol=0)
    assert float(stats["ratio/mean"]) == 1.0 and float(stats["clip_ratio/region_mean"]) == 0.0


def test_grpo_loss_validation():
    logps, old, ref, adv, mask = _inputs()
    with pytest.raises(ValueError, match="aggregation"):
        grpo_loss(logps, old, ref, adv, mask, aggregation="mean")
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, old, None, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logps, old, ref, adv[:3], mask)
    with pytest.raises(ValueError, match="old_logps"):
        grpo_loss(logps, old[:, :3], ref, adv, mask)


def test_masked_helpers():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert float(masked_sum(x, m)) == 3.0 and float(masked_mean(x, m)) == 1.5
    assert masked_mean(x, m, dim=-1).tolist() == [1.5, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equals_log_softmax_gather(dtype, temperature):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 50, generator=g) * 4).to(dtype).requires_grad_(True)
    labels = torch.randint(0, 50, (3, 5), generator=g)
    labels[1, 4] = -100
    ours = token_logprobs(logits, labels, temperature, chunk_size=4)
    full = torch.log_softmax(logits.float() / temperature, dim=-1)
    expected = full.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1).masked_fill(labels < 0, 0.0)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    (g1,) = torch.autograd.grad(ours.sum(), logits)
    (g2,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(g1.float(), g2.float(), atol=1e-5, rtol=1e-5)


def test_token_logprobs_gradcheck_on_a_non_contiguous_slice():
    """The custom backward (softmax recomputed from the saved logsumexp) passes torch's numerical gradcheck."""
    g = torch.Generator().manual_seed(2)
    full = torch.randn(2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5), generator=g)
    labels[0, 1] = -100
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x[:, :-1], labels, 0.7, chunk_size=2), (full,))


def test_token_logprobs_equals_trl_selective_log_softmax():
    utils = pytest.importorskip("trl.trainer.utils")
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(2, 4, 30, generator=g), torch.randint(0, 30, (2, 4), generator=g)
    torch.testing.assert_close(token_logprobs(logits, labels, 0.9), utils.selective_log_softmax(logits, labels, 0.9),
                               atol=1e-6, rtol=0)
