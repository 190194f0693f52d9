"""`data.example_turns`: fixed demonstration turns (e.g. a one-shot ``<answer>yes</answer>``) before every question of
prompt data, rendered once, after the system prompt and before the question, identically in training and in
`medlab.evaluation.evaluate_qa`; malformed turns are config problems naming the key."""

from __future__ import annotations

import pytest
from helpers import tiny_llama, write_jsonl

import medlab
from medlab.rl.data import PromptData, example_turn_problems

pytestmark = pytest.mark.usefixtures("one_thread")

SYSTEM = "Answer with <answer>yes|no|maybe</answer>."
TURNS = [{"role": "user", "content": "Question: Does walking lower blood pressure?"},
         {"role": "assistant", "content": "<answer>yes</answer>"}]
ROWS = [{"id": f"q{i}", "question": f"Is marker {i} prognostic in sepsis?", "answer": ["yes", "no", "maybe"][i % 3]}
        for i in range(6)]


def _data(tmp_path, **kw) -> PromptData:
    return PromptData(write_jsonl(tmp_path / "qa.jsonl", ROWS), system_prompt=SYSTEM, **kw)


def test_turns_are_rendered_once_between_system_prompt_and_question(tmp_path, tok):
    data = _data(tmp_path, example_turns=TURNS)
    plain = _data(tmp_path)
    assert data.validate() == []
    data.setup(tok)
    plain.setup(tok)
    for ex, base in zip(data.train_dataset, plain.train_dataset):
        text, q = ex["prompt"], ex["fields"]["question"]
        assert text.count(TURNS[0]["content"]) == 1 and text.count("<answer>yes</answer>") == 1
        assert text.index(SYSTEM) < text.index(TURNS[0]["content"]) < text.index("<answer>yes</answer>") < text.index(q)
        assert ex["messages"] == [{"role": "system", "content": SYSTEM}, *TURNS, {"role": "user", "content": q}]
        # exactly the demonstration's two turns were added (the chatml turns, nothing else)
        added = ("<|im_start|>user\n" + TURNS[0]["content"] + "<|im_end|>\n<|im_start|>assistant\n"
                 + TURNS[1]["content"] + "<|im_end|>\n")
        assert text == base["prompt"].replace("<|im_start|>user\n", added + "<|im_start|>user\n", 1)
        assert len(ex["prompt_ids"]) > len(base["prompt_ids"])


class _RecordingEngine:
    """Records the prompt token ids it is asked to answer; answers ``<answer>yes</answer>``."""

    def __init__(self, tok):
        self.tok, self.prompts = tok, []

    def generate(self, prompt_ids, **kw):
        from medlab.rl.generation import Rollout

        self.prompts += [list(p) for p in prompt_ids]
        texts = ["<answer>yes</answer>"] * len(prompt_ids)
        ids = [self.tok.encode(t) + [self.tok.eos_token_id] for t in texts]
        return Rollout.from_token_lists(prompt_ids, ids, eos_token_id=self.tok.eos_token_id,
                                        pad_token_id=self.tok.pad_token_id, texts=texts)


def test_evaluate_qa_renders_the_prompts_training_renders(tmp_path, tok):
    """The run config's example_turns reach evaluate_qa (before/after evaluations of a run): the same token ids."""
    from hydra.utils import instantiate
    from peft import LoraConfig, get_peft_model

    from medlab.evaluation import evaluate_qa
    from medlab.objectives.grpo import GRPOPolicy

    path = write_jsonl(tmp_path / "qa.jsonl", ROWS)
    turns = "[{role: user, content: 'Question: Does walking lower blood pressure?'}, {role: assistant, content: '<answer>yes</answer>'}]"
    cfg = medlab.compose("grpo_lora", [f"data.path={path}", "data.val_path=null", "data.val_split=0",
                                       f"data.system_prompt='{SYSTEM}'", f"data.example_turns={turns}"],
                         run_dir=str(tmp_path / "unused"))
    data = instantiate(cfg.data)
    data.setup(tok)
    assert data.example_turns == TURNS and TURNS[0]["content"] in data.train_dataset[0]["prompt"]
    model = get_peft_model(tiny_llama(vocab=len(tok), hidden=32), LoraConfig(r=4, lora_alpha=8,
                                                                            target_modules=["q_proj", "v_proj"]))
    module = GRPOPolicy(model, tok, rewards={"em": {"_target_": "medlab.rl.rewards.exact_match"}}, num_generations=2,
                        max_new_tokens=4)
    engine = _RecordingEngine(tok)
    out = evaluate_qa(module, cfg, {"path": str(path)}, batch_size=4, engine=engine)
    assert out["num_questions"] == 6 and out["format_failure_rate"] == 0.0 and out["accuracy"] == pytest.approx(2 / 6)
    assert engine.prompts == [e["prompt_ids"] for e in data.train_dataset]


def test_malformed_turns_are_config_problems_naming_the_key(tmp_path):
    bad = [{"role": "assistant", "content": "<answer>yes</answer>"}, {"role": "user", "content": " "},
           "hello", {"role": "user", "content": "Q?", "name": "x"}]
    problems = _data(tmp_path, example_turns=bad).validate()
    assert problems == [
        "data.example_turns[0].role='assistant': expected 'user' (turns alternate user / assistant, starting with user)",
        "data.example_turns[1].role='user': expected 'assistant' (turns alternate user / assistant, starting with user)",
        "data.example_turns[1].content must be a non-empty string, got ' '",
        "data.example_turns[2] must be a mapping {role, content}, got str",
        "data.example_turns[3] has unknown key(s) ['name'] (only role and content)",
        "data.example_turns[3].role='user': expected 'assistant' (turns alternate user / assistant, starting with user)",
    ]
    assert example_turn_problems(TURNS[:1]) == [
        "data.example_turns has 1 turns: it must end with an assistant turn (the demonstrated answer)"]
    assert example_turn_problems("<answer>yes</answer>") == [
        "data.example_turns must be a list of {role, content} turns or null, got str"]
    assert example_turn_problems(None) == [] and example_turn_problems([]) == []


def test_the_run_reports_bad_turns_before_any_work(tmp_path):
    from medlab.config import collect_problems

    path = write_jsonl(tmp_path / "qa.jsonl", ROWS)
    cfg = medlab.compose("grpo_lora", [f"data.path={path}", "data.val_path=null", "data.val_split=0.5",
                                       "data.example_turns=[{role: user, content: 'Q?'}]"],
                         run_dir=str(tmp_path / "unused"))
    problems = collect_problems(cfg)
    assert any("data.example_turns has 1 turns: it must end with an assistant turn" in p for p in problems), problems
