"""The export carries the chat template the run trained with.

For every template medlab ships (and `tokenizer`, the model's own), the exported tokenizer's
`apply_chat_template` gives exactly the text and token ids the training data rendered: same special tokens,
same generation prompt, the run's default system prompt where a conversation has none; the template's
end-of-turn token is a stop token of the exported `generation_config.json`. One test goes through a real
`medlab.run` export (adapter and merged model).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
from helpers import read_jsonl
from test_data_support import CONVERSATIONS, SAMPLE_DIR
from transformers import AutoTokenizer, GenerationConfig

import medlab
from medlab.data.formats import add_default_system, normalize_record
from medlab.data.templates import END_OF_TURN, TEMPLATE_NAMES, get_template, to_hf_messages, to_hf_tools
from medlab.data.tokenize import end_of_turn_id, tokenize_conversation
from medlab.export import chat_export, export_model, save_tokenizer
from medlab.rl.data import PromptData

SYSTEM = "You are a careful medical assistant. 回答要简洁。"


def _ids(encoded) -> list[int]:
    ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def _tiny_model(tokenizer):
    """A tiny Llama whose EOS is the tokenizer's, as medlab's loader builds them."""
    from helpers import tiny_llama

    model = tiny_llama(vocab=len(tokenizer))
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for this module


# ---------------------------------------------------------------------------------------------- SFT data
@pytest.mark.parametrize("system_prompt", [None, SYSTEM])
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_export_renders_conversations_as_training_did(tmp_path, tokenizer, name, system_prompt):  # noqa: F811
    original = tokenizer.chat_template
    data_cfg = {"template": name, "mode": "sft", "system_prompt": system_prompt}
    chat = chat_export(data_cfg, tokenizer)
    if name == "tokenizer" and system_prompt is None:
        assert chat is None  # the model's own template, unchanged
    out = export_model(_tiny_model(tokenizer), tokenizer, tmp_path / "export", chat)
    assert tokenizer.chat_template == original  # the live tokenizer is left alone
    exported = AutoTokenizer.from_pretrained(out)
    template = get_template(name, tokenizer)

    for key, (messages, tools) in CONVERSATIONS.items():
        trained = add_default_system(messages, system_prompt)  # what the data pipeline renders
        hf_tools = to_hf_tools(tools)
        # the whole conversation: text and token ids as in training
        text = exported.apply_chat_template(to_hf_messages(messages), tools=hf_tools, tokenize=False)
        assert text == template.render(trained, tools), (name, key)
        ids = exported.apply_chat_template(to_hf_messages(messages), tools=hf_tools, tokenize=True)
        assert _ids(ids) == tokenize_conversation(trained, tools, template=template, tokenizer=tokenizer)[0], key
        # the prompt for the last answer (generation prompt included)
        prompt = exported.apply_chat_template(to_hf_messages(messages[:-1]), tools=hf_tools, tokenize=False,
                                              add_generation_prompt=True)
        assert prompt == template.render(add_default_system(messages[:-1], system_prompt), tools,
                                         add_generation_prompt=True), (name, key)
        # a conversation that brings its own system message keeps it
        own = [{"role": "system", "content": "Custom system.", "tool_calls": []}] + [
            m for m in messages if m["role"] != "system"]
        assert exported.apply_chat_template(to_hf_messages(own), tools=hf_tools, tokenize=False) == \
            template.render(own, tools)

    stop = end_of_turn_id(template, tokenizer)
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert stop in ([eos] if isinstance(eos, int) else eos)
    if name != "tokenizer":
        assert tokenizer.convert_ids_to_tokens(stop) == END_OF_TURN[name]


def test_cpt_and_retrieval_runs_keep_the_tokenizers_template(tokenizer):  # noqa: F811
    assert chat_export(medlab.compose("cpt", ["+data.template=llama3"], run_dir="/tmp/unused").data, tokenizer) is None
    assert chat_export(medlab.compose("biencoder", run_dir="/tmp/unused").data, tokenizer) is None
    assert chat_export(None, tokenizer) is None


# ---------------------------------------------------------------------------------------------- GRPO prompts
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_export_renders_grpo_prompts_as_training_did(tmp_path, tokenizer, name):  # noqa: F811
    cfg = medlab.compose("grpo_lora", [f"data.template={name}", "data.limit=6", "data.val_limit=2"],
                         run_dir="/tmp/unused")
    from hydra.utils import instantiate

    data: PromptData = instantiate(cfg.data)
    data.setup(tokenizer)
    chat = chat_export(cfg.data, tokenizer)
    assert chat is not None  # the GRPO system prompt is part of what the policy was trained on
    save_tokenizer(tokenizer, tmp_path, chat.template)
    exported = AutoTokenizer.from_pretrained(tmp_path)
    for example in data.train_dataset:
        messages = example["messages"]
        assert messages[0] == {"role": "system", "content": data.system_prompt}
        for asked in (messages, messages[1:]):  # with the run's system prompt, or leaving it to the template
            prompt = exported.apply_chat_template(asked, tokenize=False, add_generation_prompt=True)
            assert prompt == example["prompt"], name
            assert _ids(exported.apply_chat_template(asked, tokenize=True, add_generation_prompt=True)) == \
                example["prompt_ids"]


@pytest.mark.parametrize("system_prompt", ["null", "''"])
def test_grpo_prompts_without_a_system_prompt(tmp_path, tokenizer, system_prompt):  # noqa: F811
    cfg = medlab.compose("grpo_lora", ["data.template=llama3", f"data.system_prompt={system_prompt}", "data.limit=4",
                                       "data.val_limit=2"], run_dir="/tmp/unused")
    from hydra.utils import instantiate

    data: PromptData = instantiate(cfg.data)
    data.setup(tokenizer)
    chat = chat_export(cfg.data, tokenizer)
    save_tokenizer(tokenizer, tmp_path, chat.template)
    exported = AutoTokenizer.from_pretrained(tmp_path)
    for example in data.train_dataset:
        assert example["messages"][0]["role"] == "user"
        assert exported.apply_chat_template(example["messages"], tokenize=False, add_generation_prompt=True) == \
            example["prompt"]


# ---------------------------------------------------------------------------------------------- a real run
def test_run_exports_the_template_it_trained_with(tmp_path, monkeypatch):
    """sft_lora with data.template=llama3 and a system prompt: the adapter export and the merged export both
    tokenize the training rows exactly as training did, and stop on <|eot_id|>."""
    from medlab.commands import train as runner

    seen = {}
    original_fit = runner.Loop.fit

    def fit(self, module, train_data, *args, **kwargs):
        seen["train"] = train_data
        return original_fit(self, module, train_data, *args, **kwargs)

    monkeypatch.setattr(runner.Loop, "fit", fit)
    cfg = medlab.compose("sft_lora", [
        "data.template=llama3", f"data.system_prompt={json.dumps(SYSTEM, ensure_ascii=False)}", "data.limit=8",
        "data.batch_size=4", "trainer.max_steps=1", "trainer.val_every_n_steps=null",
        "trainer.ckpt_every_n_steps=null", "trainer.save_final_checkpoint=false", "trainer.limit_val_batches=1",
        "trainer.progress_bar=false", "logger=none", "export.merge_lora=true",
    ], run_dir=str(tmp_path / "run"))
    result = medlab.run(cfg)

    records = read_jsonl(SAMPLE_DIR / "sft_alpaca.jsonl", limit=8)
    trained = {tuple(row["input_ids"]) for row in seen["train"]}
    assert len(trained) == 8
    for export in ("export", "export_merged"):
        exported = AutoTokenizer.from_pretrained(result.run_dir / export)
        assert exported.chat_template != AutoTokenizer.from_pretrained(medlab.ASSETS_DIR / "tokenizer").chat_template
        for record in records:
            messages = normalize_record(record, "alpaca")["messages"]  # no system message: the template adds it
            ids = _ids(exported.apply_chat_template(to_hf_messages(messages), tokenize=True))
            assert tuple(ids) in trained or tuple(ids[: cfg.data.max_length]) in {t[: cfg.data.max_length] for t in
                                                                                   trained}, export
            text = exported.apply_chat_template(to_hf_messages(messages), tokenize=False)
            assert text.startswith(f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{SYSTEM}<|eot_id|>")
        eot = exported.convert_tokens_to_ids("<|eot_id|>")
        eos = GenerationConfig.from_pretrained(result.run_dir / export).eos_token_id
        assert eot in ([eos] if isinstance(eos, int) else eos), export
