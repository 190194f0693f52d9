"""Train medlab's small shipped tokenizer (``medlab/assets/tokenizer/``) on the sample data.

A byte-level BPE with a 4096-token vocabulary, trained with the ``tokenizers`` library on every
string in ``medlab/assets/sample/`` (English and Chinese), saved as a transformers
``PreTrainedTokenizerFast`` directory with a ChatML chat template. It exists so tests, demos and
tiny random-init models need no download. Byte-level BPE covers any input (unseen characters
fall back to bytes) and decodes back to the exact input text.

Rerun after changing the sample data (training is deterministic)::

    python -m medlab.assets.make_sample_data && python -m medlab.assets.build_tokenizer
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ASSETS_DIR = Path(__file__).resolve().parent
SAMPLE_DIR = ASSETS_DIR / "sample"
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"
VOCAB_SIZE = 4096
MODEL_MAX_LENGTH = 2048

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
# Markers of the chat formats medlab can render (ChatML, Llama 3, ChatGLM, Baichuan, Llama 2,
# DeepSeek, Qwen tool calls). Each must stay one token, so they are special tokens, not learned merges.
SPECIAL_TOKENS = [
    PAD_TOKEN, "<|im_start|>", EOS_TOKEN,
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<reserved_106>", "<reserved_107>",
    "<s>", "</s>",
    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
]

DEFAULT_TOOL_SYSTEM = "You are a helpful medical assistant."

# Qwen2.5-style ChatML. Differences: no default system turn unless tools are given (keeps plain
# chats short), and tool-call arguments may be a dict or an already-serialised JSON string.
CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- '" + DEFAULT_TOOL_SYSTEM + "' }}\n"
    "    {%- endif %}\n"
    "    {{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- '\\n' }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n' }}\n"
    "{%- elif messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message['role'] == 'user' or (message['role'] == 'system' and not loop.first)"
    " or (message['role'] == 'assistant' and not message.get('tool_calls')) %}\n"
    "        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- '<|im_start|>assistant' }}\n"
    "        {%- if message['content'] %}\n"
    "            {{- '\\n' + message['content'] }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message['tool_calls'] %}\n"
    "            {%- if tool_call['function'] is defined %}\n"
    "                {%- set tool_call = tool_call['function'] %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' + tool_call['name'] + '\", \"arguments\": ' }}\n"
    "            {%- if tool_call['arguments'] is string %}\n"
    "                {{- tool_call['arguments'] }}\n"
    "            {%- else %}\n"
    "                {{- tool_call['arguments'] | tojson }}\n"
    "            {%- endif %}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message['role'] == 'tool' %}\n"
    "        {#- Consecutive tool results share one user turn. #}\n"
    "        {%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}\n"
    "        {%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)


def strings_in(value) -> Iterator[str]:
    """Every string inside a parsed JSON value (tool schemas and call arguments included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)


def training_texts(sample_dir: Path = SAMPLE_DIR) -> Iterator[str]:
    for path in sorted(sample_dir.glob("*.txt")):
        yield from (line for line in path.read_text(encoding="utf-8").splitlines() if line)
    for path in sorted(sample_dir.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            yield from strings_in(json.loads(line))


def train_bpe(texts: Iterator[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # No prefix space: decode(encode(text)) must give back exactly `text`.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        # All 256 byte symbols up front, so any UTF-8 input is encodable even if unseen in training.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,  # differs from eos so padding never masks a real end-of-turn
        unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (PAD_TOKEN, EOS_TOKEN)],
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        clean_up_tokenization_spaces=False,  # cleanup would rewrite " ." etc. and break round-trips
        chat_template=CHAT_TEMPLATE,
    )


def make_config_portable(out_dir: Path) -> None:
    """Rewrite tokenizer_config.json so transformers 4.x loads it as well as 5.x.

    transformers 5 writes ``"tokenizer_class": "TokenizersBackend"`` and a list-valued
    ``extra_special_tokens``; 4.x knows neither (it expects a dict there). The 4.x names are
    still understood by 5.x, so use them.
    """
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config["additional_special_tokens"] = extra
    elif extra:
        config["extra_special_tokens"] = extra
    path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def write_special_tokens_map(hf_tok: PreTrainedTokenizerFast, out_dir: Path) -> None:
    # Recent transformers keep this only inside tokenizer_config.json; older loaders and
    # people reading the directory still expect the separate file.
    path = out_dir / "special_tokens_map.json"
    if not path.exists():
        extra = [t for t in SPECIAL_TOKENS if t not in (PAD_TOKEN, EOS_TOKEN)]
        data = {"eos_token": hf_tok.eos_token, "pad_token": hf_tok.pad_token, "additional_special_tokens": extra}
        path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def main(out_dir: Path = TOKENIZER_DIR) -> PreTrainedTokenizerFast:
    hf_tok = wrap(train_bpe(training_texts()))
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(out_dir)
    make_config_portable(out_dir)
    write_special_tokens_map(hf_tok, out_dir)
    size_kb = sum(p.stat().st_size for p in out_dir.iterdir()) / 1024
    print(f"saved {out_dir} (vocab {len(hf_tok)}, {size_kb:.0f} KB)")
    return hf_tok


if __name__ == "__main__":
    main()
