"""medlab's SFT loss equals TRL SFTTrainer's (and transformers') on the same tiny model and batch.

The model and tokenizer are built exactly as a run builds them (``medlab.compose`` + the model config's
``_target_``), the rows are tokenized and collated by medlab's own data pipeline, and medlab's loss is
``CausalLM.training_step``. TRL gets the same token sequences pre-tokenized (it skips its own tokenization
when the dataset has ``input_ids``) with a ``completion_mask`` column derived from medlab's labels:
with ``completion_only_loss=True`` TRL 1.16 turns that mask into its ``labels`` column during dataset
preparation (``SFTTrainer._prepare_dataset.build_labels``: token if mask else -100), so both sides train
on the same assistant tokens. TRL's ``assistant_only_loss`` is not usable here: it requires a
conversational (``messages``) dataset and re-renders the chat template itself.

Everything is fp32 on CPU; losses agree to 1e-6 (see ``_assert_same``).
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("trl")

from medlab.ops import losses  # noqa: E402
from medlab.objectives.causal_lm import CausalLM  # noqa: E402

N_ROWS = 6
# "Equal to 1e-6" in fp32: 1e-6 absolute plus 1e-6 relative. The losses are ~3.9 (see the fixture), where one fp32
# ulp is 2.4e-7. TRL's fused LM head projects only the label positions, in tiles, so its logits, and with them
# its log-softmax, differ from the full-logit cross-entropy in the last bits: up to ~8 ulps (1.9e-6, relative
# 4.9e-7) over the row subsets tried. A masking, shift or normalization difference is >= 1e-2 (checked below).
RTOL = ATOL = 1e-6


def _assert_same(ours: torch.Tensor | float, theirs: torch.Tensor | float) -> None:
    ours, theirs = (float(x.detach()) if isinstance(x, torch.Tensor) else float(x) for x in (ours, theirs))
    assert abs(ours - theirs) <= ATOL + RTOL * abs(theirs), f"medlab {ours!r} != {theirs!r} (diff {ours - theirs:.3g})"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model, tokenizer, data module, first N_ROWS tokenized examples) — built the way a run builds them."""
    from hydra.utils import instantiate

    import medlab

    tmp = tmp_path_factory.mktemp("trl_eq")
    cfg = medlab.compose(None, ["data.limit=16"], run_dir=str(tmp / "run"))
    model, tokenizer = instantiate(cfg.model)()
    data = instantiate(cfg.data)
    data.setup(tokenizer)
    examples = [data.train_dataset[i] for i in range(N_ROWS)]
    # A random init predicts an almost uniform distribution (loss ~ ln V = 8.3) whichever tokens are masked, and
    # at 8.3 one fp32 ulp is 9.5e-7, the whole tolerance. A few Adam steps on these rows make the predictions
    # non-trivial (a wrong mask or shift then shows) and bring the loss below 4, where an ulp is 2.4e-7.
    module = CausalLM(model)
    batch = data.collate(examples)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    for _ in range(80):  # ~13 steps for the shipped sample rows
        loss = module.training_step(batch, 0)["loss"]
        if loss.item() < 3.9:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 4.0
    model.zero_grad(set_to_none=True)
    model.train()  # dropout is 0 in the tiny config; train mode is what both trainers use
    lengths = {len(e["input_ids"]) for e in examples}
    assert len(lengths) > 1, "want rows of different lengths so padding matters"
    for e in examples:  # medlab's labels are input_ids with non-assistant tokens set to -100
        assert all(label in (-100, token) for label, token in zip(e["labels"], e["input_ids"]))
        assert 0 < sum(label != -100 for label in e["labels"]) < len(e["labels"])
    return model, tokenizer, data, examples


def _collate(data, examples, packing: bool) -> dict:
    old = data.packing
    data.packing = packing
    try:
        return data.collate(examples)
    finally:
        data.packing = old


def _medlab_loss(model, batch) -> torch.Tensor:
    return CausalLM(model).training_step(batch, 0)["loss"]


def _trl_trainer(model, tokenizer, examples, tmp_path, *, padding_free: bool):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = {
        "input_ids": [list(e["input_ids"]) for e in examples],
        "completion_mask": [[int(label != -100) for label in e["labels"]] for e in examples],
    }
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"), report_to=[], per_device_train_batch_size=len(examples),
        completion_only_loss=True,
        # TRL refuses padding_free without packing when max_length is set (it would not be enforced); the rows
        # are already truncated by medlab, so no truncation is needed on either path.
        max_length=None if padding_free else 4096,
        padding_free=padding_free, use_cpu=True, bf16=False, fp16=False, shuffle_dataset=False,
        dataset_num_proc=None, seed=0,
    )
    # SFTTrainer patches the model's forward (fused LM head) and edits its config: give it its own copy.
    trainer = SFTTrainer(model=copy.deepcopy(model), args=args, train_dataset=Dataset.from_dict(rows),
                         processing_class=tokenizer)
    assert len(trainer.train_dataset) == len(examples)  # nothing dropped or reordered by TRL's preparation
    trainer.model.train()
    return trainer


def _trl_batch(trainer, n: int, start: int = 0) -> dict:
    return trainer.data_collator([trainer.train_dataset[i] for i in range(start, start + n)])


def test_padded_loss_equals_trl(setup, tmp_path):
    model, tokenizer, data, examples = setup
    batch = _collate(data, examples, packing=False)
    ours = _medlab_loss(model, batch)

    trainer = _trl_trainer(model, tokenizer, examples, tmp_path, padding_free=False)
    trl_batch = _trl_batch(trainer, len(examples))
    # Same tokens and the same loss positions: TRL pads with the tokenizer's pad id and -100, as medlab does.
    assert torch.equal(trl_batch["input_ids"], batch["input_ids"])
    assert torch.equal(trl_batch["labels"], batch["labels"])
    assert torch.equal(trl_batch["attention_mask"], batch["attention_mask"])
    # num_items_in_batch=None: TRL divides by this batch's label tokens (label_mask.sum()), the same
    # token-level mean medlab computes per micro-batch.
    theirs = trainer.compute_loss(trainer.model, trl_batch)
    _assert_same(ours, theirs)

    # The gradients agree too (TRL's fused head has its own backward).
    ours.backward()
    theirs.backward()
    theirs_grads = dict(trainer.model.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, theirs_grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    model.zero_grad(set_to_none=True)

    # Sensitivity: a wrong mask (loss on every token), an off-by-one shift or a per-row mean instead of the
    # token-level mean would each miss the tolerance by orders of magnitude.
    with torch.no_grad():
        logits = CausalLM(model)(batch)
        unmasked = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        shifted = torch.roll(batch["labels"], 1, dims=1)
        wrong = [losses.causal_lm_loss(logits, unmasked), losses.causal_lm_loss(logits, shifted),
                 torch.stack([losses.causal_lm_loss(logits[i : i + 1], batch["labels"][i : i + 1])
                              for i in range(len(examples))]).mean()]
    for value in wrong:
        assert abs(value.item() - ours.item()) > 1e-2, wrong


def test_padding_free_loss_equals_trl_padding_free(setup, tmp_path):
    """medlab's packed (padding-free) batch vs TRL ``padding_free=True``.

    TRL documents padding-free as FlashAttention-only, but its collator only emits ``position_ids`` (no
    attention_mask) plus varlen kwargs that SDPA ignores; transformers then derives the per-document
    block-diagonal mask from ``position_ids`` for SDPA too, so it runs (and is correct) on CPU.
    """
    model, tokenizer, data, examples = setup
    packed = _collate(data, examples, packing=True)
    padded = _collate(data, examples, packing=False)
    ours = _medlab_loss(model, packed)
    # padding-free equals padded: same token-level mean, no attention across rows
    _assert_same(ours, _medlab_loss(model, padded))

    trainer = _trl_trainer(model, tokenizer, examples, tmp_path, padding_free=True)
    trl_batch = _trl_batch(trainer, len(examples))
    assert "attention_mask" not in trl_batch
    for key in ("input_ids", "labels", "position_ids"):  # identical flattening and first-token masking
        assert torch.equal(trl_batch[key], packed[key]), key
    theirs = trainer.compute_loss(trainer.model, trl_batch)
    _assert_same(ours, theirs)


def test_accumulated_window_equals_trl_num_items_in_batch(setup, tmp_path):
    """Gradient accumulation: TRL/Trainer divide every micro-batch's summed NLL by ``num_items_in_batch`` (the
    label tokens of the whole accumulation window, counted over ``labels[..., 1:]``); medlab scales each
    micro-batch mean by ``w_i / W`` with ``w_i = num_label_tokens``. Both are the window's token-level mean."""
    model, tokenizer, data, examples = setup
    halves = [examples[:3], examples[3:]]
    ours_batches = [_collate(data, h, packing=False) for h in halves]
    weights = [b["num_label_tokens"] for b in ours_batches]
    module = CausalLM(model)
    ours = sum(module.training_step(b, 0)["loss"] * w for b, w in zip(ours_batches, weights)) / sum(weights)
    whole = _medlab_loss(model, _collate(data, examples, packing=False))
    _assert_same(ours, whole)

    trainer = _trl_trainer(model, tokenizer, examples, tmp_path, padding_free=False)
    trl_batches = [_trl_batch(trainer, 3, 0), _trl_batch(trainer, 3, 3)]
    count = getattr(trainer, "_get_num_items_in_batch", None)  # what Trainer.train passes (private API)
    n_items = count(trl_batches, torch.device("cpu")) if count else None
    if n_items is None:  # count as Trainer does
        n_items = sum(int((b["labels"][..., 1:] != -100).sum()) for b in trl_batches)
    assert int(n_items) == sum(weights)
    theirs = sum(trainer.compute_loss(trainer.model, b, num_items_in_batch=n_items) for b in trl_batches)
    _assert_same(ours, theirs)


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "padding_free"])
def test_causal_lm_loss_equals_transformers(setup, packing):
    model, _, data, examples = setup
    batch = _collate(data, examples, packing=packing)
    kwargs = {"position_ids": batch["position_ids"]} if packing else {"attention_mask": batch["attention_mask"]}
    out = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False, **kwargs)
    ours = losses.causal_lm_loss(out.logits, batch["labels"])
    _assert_same(ours, out.loss)
    _assert_same(ours, _medlab_loss(model, batch))
