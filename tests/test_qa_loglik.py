"""QA benchmarks: loglik scoring (hand computation, lm-evaluation-harness's numbers and prompt formats), acc /
acc_norm, few-shot, generate-mode records and the `python -m medlab.evaluate eval.task=qa` outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import TOKENIZER_DIR, tiny_llama, write_jsonl

import medlab
from medlab.config import ConfigError
from medlab.evaluation.loglik import OptionScore, encode_pair, option_logliks, plan_batches
from medlab.evaluation.mcq import CMMLU_SUBJECTS, FewShot, build_items, doc_text, prompt_style
from medlab.evaluation.qa_loglik import evaluate_loglik, score_items
from medlab.rl.data import PromptData

pytestmark = pytest.mark.usefixtures("one_thread")
QA_FILE = medlab.ASSETS_DIR / "sample" / "qa_mc_val.jsonl"
PUBMED = [{"id": "p1", "question": "Does aspirin reduce fever?", "contexts": ["Aspirin is an NSAID.", "It lowers fever."],
           "answer": "yes"},
          {"id": "p2", "question": "Is rest harmful?", "contexts": ["Rest helps recovery."], "answer": "no"},
          {"id": "p3", "question": "Do statins cure colds?", "contexts": "No trial studied this.", "answer": "maybe"}]
MEDQA = [{"question": "Which drug treats strep throat?", "options": {"A": "Penicillin", "B": "Insulin", "C": "Heparin",
                                                                      "D": "Warfarin"}, "answer": "A"},
         {"question": "Which organ makes insulin?", "options": ["Liver", "Pancreas", "Kidney", "Lung"], "answer": "B"}]
CMMLU = [{"subject": "anatomy", "question": "壁胸膜的分部不包括", "options": {"A": "肋胸膜", "B": "肺胸膜", "C": "膈胸膜",
                                                                        "D": "胸膜顶"}, "answer": "B"},
         {"subject": "virology", "question": "流感病毒属于", "options": {"A": "DNA病毒", "B": "RNA病毒", "C": "细菌",
                                                                     "D": "真菌"}, "answer": "B"}]


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(vocab=len(tok), hidden=32, seed=3)


def rows_of(records):
    return PromptData(None).rows_from_records([dict(r) for r in records])


def reference_loglik(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """By hand: one full forward of context + continuation, log-softmax, sum over the continuation's tokens."""
    ctx, cont = encode_pair(tok, context, continuation)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].double(), dim=-1)
    picks = [logp[len(ctx) - 1 + j] for j in range(len(cont))]
    return sum(float(p[t]) for p, t in zip(picks, cont)), all(int(p.argmax()) == t for p, t in zip(picks, cont))


# ---------------------------------------------------------------------------------------------- scores
def test_option_logliks_equal_a_hand_computation_at_every_batch_size(model, tok):
    shared = "The following are medical questions.\n\n"  # a shared prefix: encoded once per batch
    requests = [(shared + "Question: is aspirin an NSAID?\nAnswer:", [" yes", " no", " maybe not at all"]),
                (shared + "Question: pick one\nA. x\nB. y\nAnswer:", [" A", " B and a long tail"]),
                (shared + "Q: short  ", ["yes please", "no"]),           # trailing spaces move to the continuation
                ("Another prompt without the prefix:", [" 1", " 22 33 44"])]
    expected = [[reference_loglik(model, tok, c, k) for k in conts] for c, conts in requests]
    for batch_size in (1, 2, 4):
        got = option_logliks(model, tok, requests, batch_size=batch_size)
        for exp_row, got_row in zip(expected, got, strict=True):
            for (ll, greedy), score in zip(exp_row, got_row, strict=True):
                assert score.loglik == pytest.approx(ll, abs=1e-5)
                assert score.greedy == greedy
    assert [s.tokens for s in got[1]] == [len(encode_pair(tok, requests[1][0], k)[1]) for k in requests[1][1]]
    assert got[1][1].tokens > 1  # multi-token continuations really took the second pass


def test_plan_batches_groups_shared_prefixes_and_sorts_the_rest_by_length():
    desc_a, desc_b = list(range(100, 120)), list(range(200, 220))   # two 20-token "subject descriptions"
    prompts = [desc_a + [1, 2], list(range(50)), desc_b + [5] * 9, desc_a + [3] * 6, [7] * 30, desc_b + [6, 6],
               [9] * 10, desc_a + [4]]
    batches = plan_batches(prompts, batch_size=2)
    assert sorted(i for b in batches for i in b) == list(range(len(prompts))) and all(len(b) <= 2 for b in batches)
    # same description -> same batch, longest first; the singletons of no group by length
    assert [3, 0] in batches and [2, 5] in batches and [1, 4] in batches and [6] in batches and [7] in batches
    # a shared prefix that saves less than the padding it costs is not worth a group: plain length order
    costly = [[1, 2, 3, 4, 5, 6, 7, 8, 9] + [0] * 200, [1, 2, 3, 4, 5, 6, 7, 8, 9], [5] * 190, [6] * 8]
    assert plan_batches(costly, batch_size=2) == [[0, 2], [1, 3]]
    assert plan_batches([], 4) == []


def test_encode_pair_moves_trailing_spaces_like_the_harness(tok):
    ctx, cont = encode_pair(tok, "Answer:  ", "yes")
    assert ctx == tok("Answer:")["input_ids"]
    assert ctx + cont == tok("Answer:  yes")["input_ids"]


def test_acc_and_acc_norm_by_hand():
    items = build_items(rows_of(PUBMED[:2]), "pubmedqa")
    # question 1: raw argmax "maybe" (-3.0), per character "yes" (-3.3/3 = -1.1 beats -3.0/5 = -0.6? no) ...
    s1 = [OptionScore(-3.3, 1, False), OptionScore(-4.0, 1, False), OptionScore(-3.0, 1, True)]
    # per character: yes -1.1, no -2.0, maybe -0.6 -> maybe; raw: maybe. gold yes -> wrong, wrong
    s2 = [OptionScore(-2.0, 1, False), OptionScore(-2.1, 1, True), OptionScore(-6.0, 2, False)]
    # raw: yes (-2.0) -> wrong (gold no); per character: yes -0.667, no -1.05, maybe -1.2 -> yes: wrong
    metrics, records = score_items(items, [s1, s2])
    assert [r["prediction"] for r in records] == ["maybe", "yes"]
    assert [r["prediction_norm"] for r in records] == ["maybe", "yes"]
    assert metrics["acc"] == 0.0 and metrics["acc_norm"] == 0.0
    s2b = [OptionScore(-2.4, 1, False), OptionScore(-2.1, 1, True), OptionScore(-6.0, 2, False)]
    # raw: no (-2.1) right; per character: yes -0.8, no -1.05 -> yes: wrong
    metrics, records = score_items(items, [s1, s2b])
    assert metrics["acc"] == 0.5 and metrics["acc_norm"] == 0.0
    assert records[1]["correct"] and not records[1]["correct_norm"] and records[1]["reference"] == "no"
    assert records[1]["loglik"] == [-2.4, -2.1, -6.0]


# ---------------------------------------------------------------------------------------------- prompt formats
def harness_texts(rows, style):
    """lm-evaluation-harness's own doc_to_text for the same rows (its task files, read from the installed
    package), with the description / target for CMMLU."""
    import importlib.resources

    import jinja2
    import yaml

    tasks = importlib.resources.files("lm_eval") / "tasks"
    if style == "pubmedqa":
        from lm_eval.tasks.pubmedqa.preprocess_pubmedqa import doc_to_text

        return [doc_to_text({"QUESTION": r["question"], "CONTEXTS": r["contexts"] if isinstance(r["contexts"], list)
                             else [r["contexts"]]}) for r in rows]
    if style == "medqa":
        from lm_eval.tasks.medqa.preprocess_medqa import doc_to_text

        return [doc_to_text({"sent1": r["question"], **{f"ending{i}": v for i, v in enumerate(r["options"].values())}})
                for r in rows]
    template = yaml.safe_load((tasks / "cmmlu" / "_default_template_yaml").read_text())["doc_to_text"]
    out = []
    for r in rows:
        desc = yaml.safe_load((tasks / "cmmlu" / f"cmmlu_{r['subject']}.yaml").read_text())["description"]
        out.append(desc + jinja2.Template(template).render(Question=r["question"], **r["options"]))
    return out


@pytest.mark.parametrize("style, records", [("pubmedqa", PUBMED), ("medqa", MEDQA), ("cmmlu", CMMLU)])
def test_prompts_match_the_harness_task_definitions(style, records):
    pytest.importorskip("lm_eval")
    rows = rows_of(records)
    assert prompt_style("auto", rows) == style
    items = build_items(rows, style)
    assert [it.context for it in items] == harness_texts(rows, style)
    assert items[0].continuations == ([" yes", " no", " maybe"] if style == "pubmedqa" else [" A", " B", " C", " D"])


def test_prompts_match_the_harness_on_the_shared_files(shared_data):
    pytest.importorskip("lm_eval")
    from medlab.data.readers import read_located

    for name, style in (("pubmedqa", "pubmedqa"), ("medqa_usmle", "medqa"), ("cmmlu_medical", "cmmlu")):
        records = read_located(shared_data / "qa" / f"{name}_train.jsonl", limit=20).dataset.to_list()
        rows = rows_of(records)
        assert prompt_style("auto", rows) == style
        if style == "medqa":  # the harness's medqa_4options: the same rows with their first four options
            rows = [{**r, "options": dict(list(r["options"].items())[:4])} for r in rows]
        if style == "cmmlu":
            assert {r["subject"] for r in rows} <= set(CMMLU_SUBJECTS)
        assert [it.context for it in build_items(rows, style)] == harness_texts(rows, style), name


def test_loglikelihoods_equal_lm_evaluation_harness(model, tok):
    """Per question and option, medlab's batched scores equal the harness's HF backend on the same model."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    rows = rows_of(PUBMED) + rows_of(MEDQA)
    items = build_items(rows[:3], "pubmedqa") + build_items(rows[3:], "medqa")
    ours = option_logliks(model, tok, [(it.context, it.continuations) for it in items], batch_size=2)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=2, device="cpu", max_length=1024)
    flat = [(it.context, c) for it in items for c in it.continuations]
    theirs = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(flat)],
                              disable_tqdm=True)
    got = [s for row in ours for s in row]
    assert len(got) == len(theirs) == 3 * 3 + 2 * 4
    for score, (ll, greedy) in zip(got, theirs):
        assert score.loglik == pytest.approx(ll, abs=1e-5)
        assert score.greedy == bool(greedy)


# ---------------------------------------------------------------------------------------------- few-shot
def test_fewshot_blocks_are_the_harness_layout_and_seeded():
    pool = rows_of(MEDQA + [{"question": "Q3?", "options": ["x", "y", "z", "w"], "answer": "C"}])
    row = rows_of([{"question": "New?", "options": ["a", "b", "c", "d"], "answer": "D"}])[0]
    first = FewShot(pool, 2, "medqa", sampler="first_n")
    assert first.block(row) == (doc_text(pool[0], "medqa") + " A\n\n" + doc_text(pool[1], "medqa") + " B\n\n")
    # the question itself is never its own example
    assert FewShot(pool, 2, "medqa", sampler="first_n").examples(pool[0]) == [pool[1], pool[2]]
    draws = lambda: [FewShot(pool, 2, "medqa", seed=7).block(row) for _ in range(3)]  # noqa: E731
    assert draws() == draws()  # fixed seed: the same examples every run
    shots = FewShot(pool, 2, "medqa", seed=7)
    seq = [tuple(r["question"] for r in shots.examples(row)) for _ in range(6)]
    assert len(set(seq)) > 1  # one generator for the run: questions get different examples
    with pytest.raises(ValueError, match="num_fewshot=5"):
        FewShot(pool, 5, "medqa")


def test_evaluate_loglik_with_fewshot_scores_the_fewshot_prompt(model, tok):
    rows, pool = rows_of(MEDQA), rows_of(CMMLU)  # any pool: the layout is what is tested
    ev = {"num_fewshot": 1, "fewshot_sampler": "first_n", "prompt_style": "medqa"}
    metrics, records = evaluate_loglik(model, tok, rows, ev, pool, batch_size=2)
    context = doc_text(pool[0], "medqa") + " B\n\n" + doc_text(rows[0], "medqa")
    expected = [reference_loglik(model, tok, context, f" {k}")[0] for k in "ABCD"]
    assert records[0]["loglik"] == pytest.approx(expected, abs=1e-5)
    assert metrics["num_fewshot"] == 1 and metrics["num_questions"] == 2
    assert metrics["acc"] == sum(r["correct"] for r in records) / 2


# ---------------------------------------------------------------------------------------------- the command
def test_evaluate_command_loglik_writes_metrics_and_samples(tmp_path, tok):
    from medlab.evaluate import main as evaluate_main

    out = tmp_path / "loglik" / "eval_metrics.json"
    metrics = evaluate_main(["run_dir=none", "eval.task=qa", "eval.mode=loglik", f"eval.path={QA_FILE}",
                             "eval.limit=6", f"eval.fewshot_path={QA_FILE}", "eval.num_fewshot=2",
                             "eval.fewshot_sampler=first_n", f"eval.out={out}"])
    assert metrics["mode"] == "loglik" and metrics["num_questions"] == 6 and metrics["num_fewshot"] == 2
    assert json.loads(out.read_text())["acc"] == metrics["acc"]
    samples = [json.loads(line) for line in (out.parent / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6
    assert {"id", "question", "prediction", "reference", "correct", "loglik", "choices"} <= set(samples[0])
    assert all(len(s["loglik"]) == len(s["choices"]) and all(math.isfinite(v) for v in s["loglik"]) for s in samples)
    assert metrics["acc"] == sum(s["correct"] for s in samples) / 6
    # the same numbers as scoring the rows directly with the command's model (the untrained tiny_llama)
    from medlab.evaluation import load_run

    _, module, _ = load_run(None)
    rows = PromptData(None).rows_from_records([json.loads(x) for x in QA_FILE.read_text().splitlines()])
    direct, recs = evaluate_loglik(module.model, module.tokenizer, rows[:6],
                                   {"num_fewshot": 2, "fewshot_sampler": "first_n"}, rows)
    flat = lambda records: [v for r in records for v in r["loglik"]]  # noqa: E731
    assert flat(recs) == pytest.approx(flat(samples), abs=1e-5)


def test_evaluate_command_generate_records_and_fewshot_turns(tmp_path):
    from medlab.evaluate import main as evaluate_main

    out = tmp_path / "gen" / "eval_metrics.json"
    metrics = evaluate_main(["run_dir=none", "eval.task=qa", f"eval.path={QA_FILE}", "eval.limit=3",
                             "eval.max_new_tokens=4", f"eval.fewshot_path={QA_FILE}", "eval.num_fewshot=2",
                             f"eval.out={out}"])
    assert metrics["mode"] == "generate" and metrics["num_questions"] == 3 and metrics["num_fewshot"] == 2
    samples = [json.loads(line) for line in (out.parent / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and {"id", "question", "prediction", "reference", "correct", "format_ok"} <= set(samples[0])
    assert metrics["format_failure_rate"] == sum(not s["format_ok"] for s in samples) / 3


def test_fewshot_generation_prompt_has_solved_turns(tok):
    from medlab.evaluation.qa import fewshot_examples

    data = PromptData(None)
    rows, pool = rows_of(MEDQA[:1]), rows_of(MEDQA[1:] + CMMLU)
    ex = fewshot_examples(data, rows, tok, pool, {"num_fewshot": 2, "fewshot_sampler": "first_n"})[0]
    roles = [m["role"] for m in ex["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert ex["messages"][2]["content"] == "<answer>B</answer>" and "Which drug" in ex["messages"][-1]["content"]
    assert ex["prompt"].endswith("<|im_start|>assistant\n") and ex["prompt_ids"] == tok(ex["prompt"], add_special_tokens=False)["input_ids"]


def test_bad_qa_options_are_config_errors_before_any_model_loads(tmp_path):
    from medlab.evaluate import main as evaluate_main

    with pytest.raises(ConfigError) as err:
        evaluate_main(["run_dir=none", "eval.task=qa", f"eval.path={QA_FILE}", "eval.mode=logprob",
                       "eval.num_fewshot=3", "eval.prompt_style=mmlu", f"eval.out={tmp_path / 'x.json'}"])
    text = str(err.value)
    assert "eval.mode='logprob'" in text and "eval.prompt_style='mmlu'" in text and "eval.fewshot_path" in text


def test_loglik_refuses_open_answers_naming_the_row(model, tok):
    rows = rows_of([{"question": "Name the drug.", "answer": "aspirin"}])
    with pytest.raises(ValueError, match="not yes/no/maybe"):
        evaluate_loglik(model, tok, rows, {}, [])
