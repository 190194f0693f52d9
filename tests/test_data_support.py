"""Shared conversations for the data tests (this module holds no tests).

The tokenizer (the ``tokenizer`` fixture in conftest.py) is the one the project ships (`medlab/assets/tokenizer`):
the masks are checked with the exact tokenizer users get by default. Conversations cover single-turn, multi-turn,
system prompts and tool calls, in English and Chinese.
"""

from __future__ import annotations

import json

from helpers import IGNORE, SAMPLE_DIR, TOKENIZER_DIR, write_jsonl  # noqa: F401  (re-exported to the data tests)

TOOLS = json.dumps(
    [
        {
            "name": "calculate_bmi",
            "description": "Body-mass index from weight and height",
            "parameters": {
                "type": "object",
                "properties": {"weight_kg": {"type": "number"}, "height_m": {"type": "number"}},
                "required": ["weight_kg", "height_m"],
            },
        }
    ]
)


def msg(role: str, content: str, tool_calls: list | None = None) -> dict:
    return {"role": role, "content": content, "tool_calls": tool_calls or []}


CONVERSATIONS = {
    "single": ([msg("user", "What is asthma?"), msg("assistant", "A chronic disease of the airways.")], None),
    "system_multi": (
        [
            msg("system", "You are a careful medical assistant."),
            msg("user", "我头痛，怎么办？"),
            msg("assistant", "多休息，多喝水。如果持续，请就医。"),
            msg("user", "Can I take ibuprofen?"),
            msg("assistant", " Usually yes, with food.\nAsk a pharmacist if you take warfarin."),
        ],
        None,
    ),
    "toolcall": (
        [
            msg("user", "I weigh 70 kg and I am 1.75 m tall. What is my BMI?"),
            msg(
                "assistant",
                "",
                [{"name": "calculate_bmi", "arguments": json.dumps({"weight_kg": 70, "height_m": 1.75})}],
            ),
            msg("tool", json.dumps({"bmi": 22.9})),
            msg("assistant", "Your BMI is 22.9, in the normal range."),
        ],
        TOOLS,
    ),
    "toolcall_with_text": (
        [
            msg("user", "BMI for 52 kg, 1.50 m?"),
            msg(
                "assistant",
                "Let me calculate it.",
                [{"name": "calculate_bmi", "arguments": json.dumps({"weight_kg": 52, "height_m": 1.5})}],
            ),
            msg("tool", json.dumps({"bmi": 23.1})),
            msg("user", "And?"),
            msg("assistant", "23.1: normal weight."),
        ],
        TOOLS,
    ),
}


def tiny_llama(vocab: int, attn_implementation: str = "sdpa", seed: int = 0):
    """A random-init 2-layer Llama in fp32, in eval mode (see tests/helpers.py)."""
    from helpers import tiny_llama as build

    return build(vocab=vocab, seed=seed, attn_implementation=attn_implementation).eval()


