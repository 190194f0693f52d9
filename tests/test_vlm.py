"""The vision-language bi-encoder path: tiny Qwen2-VL build/reload, batching, pooling, gradients, LoRA."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import read_jsonl
from PIL import Image

from medlab.models.vlm import (
    embed_items,
    encode,
    ensure_tiny_vlm,
    load_vlm,
    multimodal_inputs,
    pool,
)


def _png(path, size, seed, mode="RGB"):
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr, "RGB").convert(mode).save(path)
    return str(path)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for this module


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return ensure_tiny_vlm(tmp_path_factory.mktemp("vlm_cache"))


@pytest.fixture(scope="module")
def vlm(vlm_dir):
    return load_vlm(vlm_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    return [
        _png(d / "a.png", (64, 64), 0),
        _png(d / "b.png", (32, 32), 1),
        _png(d / "c.png", (64, 48), 2, mode="L"),  # grayscale -> converted to RGB
        _png(d / "d.png", (48, 64), 3, mode="RGBA"),
    ]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_build_is_cached_deterministic_and_loads_offline(tmp_path, vlm_dir):
    from transformers import AutoModel

    d1 = ensure_tiny_vlm(tmp_path)
    stamp = (d1 / "model.safetensors").stat().st_mtime_ns
    d2 = ensure_tiny_vlm(tmp_path)
    assert d1 == d2 and d1.name == vlm_dir.name  # same arch -> same hash dir, in any cache
    assert (d1 / "model.safetensors").stat().st_mtime_ns == stamp  # cache hit: not rebuilt
    assert not [p for p in d1.parent.iterdir() if p.name.startswith(".tmp-")]
    s1, s2 = _state(load_vlm(d1)[0]), _state(AutoModel.from_pretrained(d2))
    s3 = _state(load_vlm(vlm_dir)[0])  # built independently in another cache dir
    assert s1.keys() == s2.keys() == s3.keys()
    assert all(torch.equal(s1[k], s2[k]) and torch.equal(s1[k], s3[k]) for k in s1)
    assert ensure_tiny_vlm(tmp_path, arch={"vision": {"depth": 1}}) != d1
    assert ensure_tiny_vlm(tmp_path, init_seed=1) != d1

    model, proc = load_vlm(d1)
    assert type(model).__name__ == "Qwen2VLModel" and not hasattr(model, "lm_head")
    assert type(proc).__name__ == "Qwen2VLProcessor"
    tok, cfg = proc.tokenizer, model.config
    assert cfg.model_type == "qwen2_vl" and cfg.text_config.vocab_size == len(tok)
    for name, token in [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]:
        assert getattr(cfg, name) == tok.convert_tokens_to_ids(token) != tok.unk_token_id
        assert tok(token, add_special_tokens=False)["input_ids"] == [getattr(cfg, name)]  # never split
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    lm, _ = load_vlm(d1, head="lm")
    assert lm.lm_head.weight.shape[0] == len(tok)
    cfg_json = json.loads((d1 / "processor_config.json").read_text())
    assert cfg_json["processor_class"] == "Qwen2VLProcessor"


def test_inputs_layout_and_truncation(vlm, images):
    _, proc = vlm
    tok = proc.tokenizer
    img_id = proc.image_token_id
    inp = multimodal_inputs(proc, [{"image": images[0], "text": "a b c d e f g h"}, {"text": "short"}],
                            max_length=None)
    assert inp["image_grid_thw"].tolist() == [[1, 8, 8]]  # 64x64, 8px patches -> 8x8 -> 16 tokens after 2x2 merge
    assert int((inp["input_ids"] == img_id).sum()) == 16 == int(inp["mm_token_type_ids"].sum())
    assert inp["pixel_values"].shape[0] == 64
    row = inp["input_ids"][0].tolist()
    assert row[0] == tok.convert_tokens_to_ids("<|vision_start|>") and row[17] == tok.convert_tokens_to_ids(
        "<|vision_end|>")
    assert row[-1] == tok.eos_token_id and inp["attention_mask"][1, -1] == 0  # right padding

    cut = multimodal_inputs(proc, [{"image": images[0], "text": "a b c d e f g h"}], max_length=20)
    assert cut["input_ids"].shape == (1, 20)
    assert int((cut["input_ids"] == img_id).sum()) == 16  # text truncated, image tokens intact
    assert cut["input_ids"][0, -1] == tok.eos_token_id
    with pytest.raises(ValueError, match="max_length"):
        multimodal_inputs(proc, [{"image": images[0], "text": "x"}], max_length=10)
    left = multimodal_inputs(proc, [{"text": "a much longer text here"}, {"text": "hi"}], max_length=None,
                             padding_side="left")
    assert left["attention_mask"][1, 0] == 0 and left["position_ids"][1, -1] == int(left["attention_mask"][1].sum()) - 1
    with pytest.raises(ValueError, match="neither"):
        multimodal_inputs(proc, [{}], max_length=None)


def test_missing_or_bad_image_names_the_path(vlm, tmp_path):
    _, proc = vlm
    missing = tmp_path / "nope" / "missing.png"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        multimodal_inputs(proc, [{"image": str(missing), "text": "x"}], max_length=None)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        multimodal_inputs(proc, [{"image": bad}], max_length=None)


@pytest.mark.parametrize("pooling", ["last_token", "mean"])
def test_text_image_and_mixed_batches_embed_to_unit_vectors(vlm, images, pooling):
    model, proc = vlm
    H = model.config.text_config.hidden_size
    batches = {
        "text": [{"text": "chest x-ray, no acute findings"}, {"text": "ct abdomen"}],
        "image": [{"image": p} for p in images],
        "mixed": [{"text": "mri brain"}, {"image": images[0]}, {"image": Image.open(images[1]), "text": "both"}],
    }
    for name, items in batches.items():
        e = embed_items(model, proc, items, pooling=pooling)
        assert e.shape == (len(items), H), name
        assert torch.allclose(e.norm(dim=-1), torch.ones(len(items)), atol=1e-5), name
    raw = embed_items(model, proc, batches["mixed"], pooling=pooling, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))
    model.train()
    embed_items(model, proc, batches["text"])
    assert model.training  # embed_items runs in eval mode and restores the caller's mode
    model.eval()


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("pooling", ["last_token", "mean"])
def test_item_embeds_the_same_alone_or_in_a_padded_batch(vlm, images, padding_side, pooling):
    model, proc = vlm
    items = [
        {"text": "a long radiology report sentence about the left lower lobe opacity"},
        {"image": images[1]},
        {"image": images[0], "text": "axial ct"},
        {"text": "short"},
        {"image": images[2], "text": "sagittal t2 weighted image of the lumbar spine"},
    ]
    batch = embed_items(model, proc, items, pooling=pooling, padding_side=padding_side, batch_size=len(items))
    for i, item in enumerate(items):
        alone = embed_items(model, proc, [item], pooling=pooling, padding_side=padding_side)
        assert torch.allclose(batch[i], alone[0], atol=1e-5), (i, (batch[i] - alone[0]).abs().max())
    texts = [it for it in items if "image" not in it]  # text-only batch (no M-RoPE path)
    tb = embed_items(model, proc, texts, pooling=pooling, padding_side=padding_side)
    assert torch.allclose(tb, batch[[0, 3]], atol=1e-5)
    assert torch.allclose(embed_items(model, proc, items, pooling=pooling, batch_size=2), batch, atol=1e-5)


def test_pool_handles_left_and_right_padding():
    h = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert torch.equal(pool(h, right, "last_token"), torch.stack([h[0, 2], h[1, 1]]))
    assert torch.equal(pool(h, left, "last_token"), torch.stack([h[0, 3], h[1, 3]]))
    assert torch.allclose(pool(h, right, "mean"), torch.stack([h[0, :3].mean(0), h[1, :2].mean(0)]))
    assert torch.allclose(pool(h, left, "mean"), torch.stack([h[0, 1:].mean(0), h[1, 2:].mean(0)]))
    with pytest.raises(ValueError, match="pooling"):
        pool(h, right, "cls")


def _infonce(model, proc, images, captions):
    img = encode(model, multimodal_inputs(proc, [{"image": p} for p in images], max_length=None))
    txt = encode(model, multimodal_inputs(proc, [{"text": c} for c in captions], max_length=None))
    logits = img @ txt.T / 0.05
    labels = torch.arange(len(images))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


CAPTIONS = ["frontal chest radiograph", "axial head ct", "coronal knee mri", "abdominal ultrasound"]


def test_infonce_gradients_reach_vision_and_text_and_sgd_lowers_loss(vlm_dir, images):
    model, proc = load_vlm(vlm_dir)
    model.train()
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for step in range(3):
        loss = _infonce(model, proc, images, CAPTIONS)
        opt.zero_grad()
        loss.backward()
        # random init: all items start nearly collinear, so the normalized InfoNCE gradient is large
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if step == 0:
            for name in ["visual.patch_embed.proj.weight", "visual.blocks.0.attn.qkv.weight",
                         "visual.merger.mlp.2.weight", "language_model.layers.0.self_attn.q_proj.weight",
                         "language_model.embed_tokens.weight"]:
                grad = model.get_parameter(name).grad
                assert grad is not None and grad.abs().sum() > 0, name
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0] and losses[-1] < losses[0], losses


def test_lora_wraps_q_v_proj_and_trains(vlm_dir, images):
    from peft import LoraConfig, get_peft_model

    model, proc = load_vlm(vlm_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    lora = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    n_layers = model.config.text_config.num_hidden_layers
    assert len(lora) == 2 * n_layers and all("language_model" in n for n in lora)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        loss = _infonce(peft_model, proc, images, CAPTIONS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0] and losses[-1] < losses[0], losses
    e = embed_items(peft_model, proc, [{"text": "x"}, {"image": images[0]}])
    assert e.shape == (2, model.config.text_config.hidden_size)


def test_real_medpix_image_caption_pairs_embed(shared_data, vlm):
    root = shared_data / "images" / "medpix2_dev"
    pairs_file = root / "image_caption_pairs.jsonl"
    if not pairs_file.exists():
        pytest.skip(f"{pairs_file} is absent")
    rows = read_jsonl(pairs_file, limit=4)
    model, proc = vlm
    imgs = embed_items(model, proc, [{"image": root / r["image"]} for r in rows])
    caps = embed_items(model, proc, [{"text": r["caption"]} for r in rows])
    both = embed_items(model, proc, [{"image": root / r["image"], "text": r["caption"]} for r in rows],
                       pooling="mean")
    for e in (imgs, caps, both):
        assert e.shape == (4, model.config.text_config.hidden_size) and torch.isfinite(e).all()
        assert torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-5)


@pytest.mark.distributed
def test_vlm_biencoder_trains_under_ddp_on_text_only_batches(tmp_path):
    """A VLM backbone on text pairs never runs its vision tower; DDP (2 gloo processes) still trains: every vision
    parameter is anchored into the loss with a zero gradient (BiEncoder._unused_vision_anchor). Without the anchor
    DDP's reducer stops at step 2 ("parameters that were not used in producing loss")."""
    import os
    import sys

    from test_distributed import Tree, _read_csv

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "medlab", "+experiment=biencoder_vlm", "data=sample_pairs", "strategy=ddp",
           "strategy.devices=2", "strategy.accelerator=cpu", "trainer.max_steps=3", "data.limit=24", "data.val_limit=8",
           "trainer.val_every_n_steps=3", "trainer.log_every_n_steps=1", "trainer.ckpt_every_n_steps=null",
           "export.enabled=false", "logger=csv", "trainer.progress_bar=false", f"hydra.run.dir={run_dir}"]
    tree = Tree(cmd, cwd=tmp_path, log=tmp_path / "ddp.log")
    rc, left = tree.wait()
    assert rc == 0 and not left, tree.output()[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 3
    losses = _read_csv(run_dir / "metrics.csv")["train/loss"]
    assert sorted(losses) == [1, 2, 3] and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert "val/ndcg@10" in metrics
    assert os.environ.get("MEDLAB_CACHE_DIR")  # the run used the session's cache (conftest), not the user's
