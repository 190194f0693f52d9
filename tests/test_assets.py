"""The shipped sample data and tokenizer are present, well-formed and agree with their generators.

They are committed assets: a missing one is a failure here (and in every test that uses it), never a skip.
"""

from __future__ import annotations

import json
import re

import pytest
from helpers import SAMPLE_DIR as SAMPLE
from helpers import TOKENIZER_DIR as TOKENIZER
from helpers import read_jsonl as _read_jsonl

import medlab
from medlab.assets import build_tokenizer, make_sample_data

ASSET_REF = re.compile(r"\$\{asset:([^}]+)\}")

ROW_RANGES = {
    "medical_corpus.txt": (250, 400),
    "sft_alpaca.jsonl": (250, 400),
    "sft_sharegpt.jsonl": (100, 160),
    "sft_messages.jsonl": (100, 160),
    "toolcall.jsonl": (100, 160),
    "val_sft_alpaca.jsonl": (30, 60),
}
CJK = re.compile(r"[\u4e00-\u9fff]")


def is_zh(text: str) -> bool:
    return bool(CJK.search(text))


def read_jsonl(name: str) -> list[dict]:
    return _read_jsonl(SAMPLE / name)


def corpus_lines() -> list[str]:
    return (SAMPLE / "medical_corpus.txt").read_text(encoding="utf-8").splitlines()


def assert_bilingual(texts: list[str]) -> None:
    zh = sum(map(is_zh, texts))
    assert 0.3 * len(texts) <= zh <= 0.7 * len(texts), f"{zh} of {len(texts)} rows are Chinese"


# ---------------------------------------------------------------------------- what the configs name


def test_every_asset_a_config_names_is_shipped():
    """Each ``${asset:...}`` in conf/ (sample data, tokenizer) is a file or directory under medlab/assets."""
    named = {ref: path for path in medlab.CONF_DIR.rglob("*.yaml") for ref in ASSET_REF.findall(path.read_text())}
    assert {"tokenizer", "sample/sft_alpaca.jsonl"} <= set(named), sorted(named)
    missing = {ref: str(path) for ref, path in named.items() if not (medlab.ASSETS_DIR / ref).exists()}
    assert not missing, f"assets named in conf/ but not shipped: {missing}"


@pytest.mark.parametrize("name", ["image_captions.jsonl", "val_image_captions.jsonl"])
def test_every_sample_image_a_caption_row_names_is_shipped(name):
    rows = read_jsonl(name)
    assert rows
    missing = [r["image"] for r in rows if not (SAMPLE / r["image"]).is_file()]
    assert not missing, f"{name} names images that are not shipped: {missing[:5]}"


# ---------------------------------------------------------------------------- sample data


@pytest.mark.parametrize("name", sorted(ROW_RANGES))
def test_sample_file_exists_is_small_and_row_count_in_range(name):
    path = SAMPLE / name
    assert path.is_file()
    assert path.stat().st_size < 300 * 1024
    low, high = ROW_RANGES[name]
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert low <= n <= high


def test_sample_readme_exists():
    assert "not for clinical use" in (SAMPLE / "README.md").read_text(encoding="utf-8")


def test_committed_samples_match_the_generator(tmp_path):
    make_sample_data.main(tmp_path)
    for name in ROW_RANGES:
        assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes(), f"{name} is stale; rerun the script"


def test_corpus_is_nonempty_paragraphs_in_both_languages():
    lines = corpus_lines()
    assert all(line.strip() == line and line for line in lines)
    assert_bilingual(lines)


@pytest.mark.parametrize("name", ["sft_alpaca.jsonl", "val_sft_alpaca.jsonl"])
def test_alpaca_rows(name):
    rows = read_jsonl(name)
    for row in rows:
        assert set(row) == {"instruction", "input", "output"}
        assert all(isinstance(v, str) for v in row.values())
        assert row["instruction"].strip() and row["output"].strip()
    assert any(row["input"] for row in rows)
    assert_bilingual([row["instruction"] + row["input"] for row in rows])


def test_validation_questions_are_held_out():
    train = {(r["instruction"], r["input"]) for r in read_jsonl("sft_alpaca.jsonl")}
    val = {(r["instruction"], r["input"]) for r in read_jsonl("val_sft_alpaca.jsonl")}
    assert not train & val
    held_out_names = [c.en for c in make_sample_data.held_out_conditions()]
    train_text = json.dumps(read_jsonl("sft_alpaca.jsonl"), ensure_ascii=False)
    assert not [n for n in held_out_names if n in train_text]


def assert_chat_turns(roles: list[str], user: str, assistant: str) -> None:
    """Optional system first, then user/assistant alternating, ending with the assistant."""
    body = roles[1:] if roles[0] == "system" else roles
    assert body and len(body) % 2 == 0
    assert body == [user, assistant] * (len(body) // 2)


def test_sharegpt_rows():
    rows = read_jsonl("sft_sharegpt.jsonl")
    for row in rows:
        conv = row["conversations"]
        assert all(set(t) == {"from", "value"} and t["value"].strip() for t in conv)
        assert_chat_turns([t["from"] for t in conv], "human", "gpt")
    assert any(r["conversations"][0]["from"] == "system" for r in rows)
    assert any(sum(t["from"] == "human" for t in r["conversations"]) >= 2 for r in rows)
    assert_bilingual([r["conversations"][-1]["value"] for r in rows])


def test_messages_rows():
    rows = read_jsonl("sft_messages.jsonl")
    for row in rows:
        msgs = row["messages"]
        assert all(set(m) == {"role", "content"} and m["content"].strip() for m in msgs)
        assert_chat_turns([m["role"] for m in msgs], "user", "assistant")
    assert any(r["messages"][0]["role"] == "system" for r in rows)
    assert any(sum(m["role"] == "user" for m in r["messages"]) >= 2 for r in rows)
    assert_bilingual([r["messages"][-1]["content"] for r in rows])


def check_tool_schemas(tools: list[dict]) -> dict[str, dict]:
    by_name = {}
    for tool in tools:
        assert tool["name"] and tool["description"]
        params = tool["parameters"]
        assert params["type"] == "object"
        assert set(params["required"]) <= set(params["properties"])
        by_name[tool["name"]] = tool
    return by_name


def test_toolcall_rows():
    rows = read_jsonl("toolcall.jsonl")
    n_calls = 0
    for row in rows:
        tools = check_tool_schemas(json.loads(row["tools"]))
        conv = row["conversations"]
        assert conv[0]["from"] == "human" and conv[-1]["from"] == "gpt"
        for prev, turn in zip(conv, conv[1:]):
            if prev["from"] == "function_call":
                assert turn["from"] == "observation"
            if turn["from"] == "observation":
                assert prev["from"] == "function_call"
        for turn in conv:
            assert isinstance(turn["value"], str) and turn["value"]
            if turn["from"] == "function_call":
                n_calls += 1
                call = json.loads(turn["value"])
                assert call["name"] in tools, f"{call['name']} not declared in this row's tools"
                assert isinstance(call["arguments"], dict)
                assert set(tools[call["name"]]["parameters"]["required"]) <= set(call["arguments"])
            elif turn["from"] == "observation":
                json.loads(turn["value"])
    with_call = sum(any(t["from"] == "function_call" for t in r["conversations"]) for r in rows)
    assert 0 < with_call < len(rows), "need rows that call a tool and rows that answer directly"
    assert n_calls > with_call, "some rows should make more than one call"
    assert_bilingual([r["conversations"][-1]["value"] for r in rows])


def test_toolcall_bmi_results_are_computed_correctly():
    checked = 0
    for row in read_jsonl("toolcall.jsonl"):
        conv = row["conversations"]
        for turn, result in zip(conv, conv[1:]):
            if turn["from"] != "function_call" or json.loads(turn["value"])["name"] != "calculate_bmi":
                continue
            args = json.loads(turn["value"])["arguments"]
            obs = json.loads(result["value"])
            assert obs["bmi"] == round(args["weight_kg"] / args["height_m"] ** 2, 1)
            assert obs["category"] == make_sample_data.who_category(obs["bmi"])
            assert str(obs["bmi"]) in conv[-1]["value"]
            checked += 1
    assert checked >= 20


def test_toolcall_lab_and_interaction_results_match_tables():
    labs = {lab.key: lab for lab in make_sample_data.LABS}
    pairs = {(ix.drug_a, ix.drug_b): ix for ix in make_sample_data.INTERACTIONS}
    for row in read_jsonl("toolcall.jsonl"):
        conv = row["conversations"]
        for turn, result in zip(conv, conv[1:]):
            if turn["from"] != "function_call":
                continue
            call, obs = json.loads(turn["value"]), json.loads(result["value"])
            if call["name"] == "find_lab_reference_range":
                lab = labs[call["arguments"]["test_name"]]
                assert obs["reference_range"] == make_sample_data.range_text(lab, "en")
            elif call["name"] == "lookup_drug_interaction":
                ix = pairs[(call["arguments"]["drug_a"], call["arguments"]["drug_b"])]
                assert obs["severity"] == ix.severity


# ---------------------------------------------------------------------------- tokenizer


def test_tokenizer_dir_is_small():
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (TOKENIZER / name).is_file()
    assert sum(p.stat().st_size for p in TOKENIZER.iterdir()) < 1024 * 1024


def test_tokenizer_settings(tok):
    assert len(tok) == build_tokenizer.VOCAB_SIZE
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id != tok.pad_token_id
    assert tok.bos_token is None
    assert tok.model_max_length == 2048 and tok.padding_side == "right"


def test_every_special_token_is_one_id(tok):
    ids = []
    for token in build_tokenizer.SPECIAL_TOKENS:
        encoded = tok(token, add_special_tokens=False).input_ids
        assert len(encoded) == 1, f"{token} splits into {encoded}"
        assert token in tok.all_special_tokens
        ids.append(encoded[0])
    assert len(set(ids)) == len(ids)
    # Special tokens inside running text stay whole too.
    text = "a<|im_start|>b<tool_call>c"
    assert tok.convert_ids_to_tokens(tok(text).input_ids).count("<|im_start|>") == 1


def test_round_trip_on_every_corpus_line(tok):
    for line in corpus_lines():
        assert tok.decode(tok(line).input_ids) == line


def test_round_trip_on_unseen_text_via_byte_fallback(tok):
    text = "  Rare: 龘靐齉, emoji 🩺, ümlaut, tabs\tand\nnewlines. "
    assert tok.decode(tok(text).input_ids) == text


def test_chinese_is_tokenized_into_multi_character_pieces(tok):
    lines = [line for line in corpus_lines() if is_zh(line)]
    chars = sum(len(line) for line in lines)
    tokens = sum(len(tok(line).input_ids) for line in lines)
    assert chars / tokens > 1.2  # learned merges, not 3 byte-tokens per character


def test_chat_template_on_messages_row(tok):
    row = next(r for r in read_jsonl("sft_messages.jsonl") if r["messages"][0]["role"] == "system")
    msgs = row["messages"]
    text = tok.apply_chat_template(msgs, tokenize=False)
    for m in msgs:
        assert f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" in text
    assert not text.endswith("<|im_start|>assistant\n")

    prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert text.startswith(prompt)
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids.count(tok.eos_token_id) == len(msgs)


def glaive_to_messages(row: dict) -> list[dict]:
    """The internal schema (docs/INTERFACES.md) for a glaive row."""
    role = {"human": "user", "gpt": "assistant", "observation": "tool"}
    msgs = []
    for turn in row["conversations"]:
        if turn["from"] == "function_call":
            msgs.append({"role": "assistant", "content": "", "tool_calls": [json.loads(turn["value"])]})
        else:
            msgs.append({"role": role[turn["from"]], "content": turn["value"]})
    return msgs


def test_chat_template_with_tools(tok):
    row = next(r for r in read_jsonl("toolcall.jsonl")
               if sum(t["from"] == "function_call" for t in r["conversations"]) == 2)
    tools = json.loads(row["tools"])
    msgs = glaive_to_messages(row)
    text = tok.apply_chat_template(msgs, tools=tools, tokenize=False)
    assert text.startswith("<|im_start|>system\n")
    assert all(json.dumps(t, ensure_ascii=False) in text for t in tools)
    after_system = text.split("<|im_end|>", 1)[1]  # the system turn holds a format example, not a call
    rendered_calls = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", after_system)
    assert [json.loads(c) for c in rendered_calls] == [m["tool_calls"][0] for m in msgs if m.get("tool_calls")]
    for m in msgs:
        if m["role"] == "tool":
            assert f"<|im_start|>user\n<tool_response>\n{m['content']}\n</tool_response><|im_end|>\n" in text
    assert text.endswith(f"{msgs[-1]['content']}<|im_end|>\n")

    # Arguments already serialised as a string render unchanged; the generation prompt is appended.
    as_string = [{"role": "user", "content": "BMI?"},
                 {"role": "assistant", "content": "",
                  "tool_calls": [{"name": "calculate_bmi", "arguments": '{"weight_kg": 70, "height_m": 1.75}'}]},
                 {"role": "tool", "content": '{"bmi": 22.9, "category": "normal weight"}'}]
    prompt = tok.apply_chat_template(as_string, tools=tools, tokenize=False, add_generation_prompt=True)
    assert '{"name": "calculate_bmi", "arguments": {"weight_kg": 70, "height_m": 1.75}}' in prompt
    assert prompt.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
