"""Search of GGUF per-tensor type mixtures on SmolLM2-135M, in memory: each 2-D weight quantized and de-quantized with
the gguf package's numpy quantizers (what an export writes and transformers' GGUF loader reads back; the Q/K row
permutation does not change a row's blocks), then the perplexity ratio vs the source on the export verification's
sample text (medlab.export.verify). Reproduces the export path's ratios to 4 digits (llama.cpp rules q4_0 1.3426,
q5_0 1.1111, q4_1 1.0000) at a fraction of its time. Sizes: tensor data only (a file adds ~1.9 MB of metadata and
tokenizer). Modes: sens (one tensor kind at a time in q4_0), mix, mix2, mix3, mix4 (the variant lists below).

    OMP_NUM_THREADS=1 nice -n 10 python experiments/export/mixture_search.py mix4
"""
import sys, time, json, math, torch, numpy as np, gguf
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(1)
from medlab.models.backbone import load_causal_lm
from medlab.export.verify import sample_texts, encode, _logits, _ppl
t0=time.time()
model, tok = load_causal_lm(source="smollm2", cache_dir=str(ROOT / ".cache"))
model.eval()
print("load", time.time()-t0, flush=True)
ids = encode(tok, sample_texts())
src = _logits(model, ids); p0 = _ppl(src, ids)
print("src ppl", p0, sum(map(len,ids)), time.time()-t0, flush=True)
orig = {k: v.detach().clone() for k, v in model.state_dict().items()}
Q = gguf.GGMLQuantizationType
def qdq(arr, t):
    return gguf.quants.dequantize(gguf.quants.quantize(arr, t), t)
cache = {}
def qw(name, t):
    key=(name,t)
    if key not in cache:
        cache[key] = torch.from_numpy(qdq(orig[name].numpy(), t).reshape(orig[name].shape).astype(np.float32))
    return cache[key]
def kind(name):
    if "embed_tokens" in name: return "token_embd"
    parts = name.split(".")
    return parts[-2]
def run(assign, label):
    sd = {}
    for n, w in orig.items():
        if w.ndim < 2: sd[n] = w; continue
        t = assign(n)
        sd[n] = w if t is None else qw(n, t)
    model.load_state_dict(sd, strict=False)
    lg = _logits(model, ids); p = _ppl(lg, ids)
    d = max(float((a-b).abs().max()) for a,b in zip(src, lg))
    print(f"{label:50s} ratio {p/p0:.4f} maxdiff {d:.3f}  t={time.time()-t0:.0f}", flush=True)
    return p/p0
mode = sys.argv[1]
if mode == "sens":
    # only one kind quantized to q4_0, rest exact
    for k in ["token_embd","q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]:
        run(lambda n, k=k: Q.Q4_0 if kind(n)==k else None, f"only {k} q4_0")
def layer(n):
    p = n.split(".")
    return int(p[2]) if p[1] == "layers" else -1
L = 30
def more(i, n=L):
    return i < n//8 or i >= 7*n//8 or (i - n//8) % 3 == 2
BITS = {Q.Q4_0: 4.5, Q.Q4_1: 5, Q.Q5_0: 5.5, Q.Q5_1: 6, Q.Q8_0: 8.5, None: 32}
def mix(rules):
    def f(n):
        if "lm_head" in n: return "skip"
        k = kind(n)
        if k == "token_embd": return Q.Q8_0
        for kk, cond, t in rules:
            if k == kk and cond(layer(n)): return t
        return Q.Q4_0
    return f
def size_mb(assign):
    tot = 0
    for n, w in orig.items():
        if "lm_head" in n: continue
        t = assign(n) if w.ndim >= 2 else None
        tot += w.numel() * BITS[t] / 8
    return tot / 1e6
def run2(assign, label):
    sd = {n: w for n, w in orig.items() if "lm_head" not in n}
    for n in list(sd):
        if sd[n].ndim >= 2:
            t = assign(n)
            if t is not None: sd[n] = qw(n, t)
    model.load_state_dict(sd, strict=False)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    lg = _logits(model, ids); p = _ppl(lg, ids)
    d = max(float((a-b).abs().max()) for a,b in zip(src, lg))
    print(f"{label:60s} {size_mb(assign):7.1f}MB ratio {p/p0:.4f} maxdiff {d:.3f}  t={time.time()-t0:.0f}", flush=True)
ALL = lambda i: True
MB = more
if mode == "mix":
    V = {
     "llama.cpp (head q8_0)": [],
     "v q8_0": [("v_proj", ALL, Q.Q8_0)],
     "v q8_0 + down q8_0 more_bits": [("v_proj", ALL, Q.Q8_0), ("down_proj", MB, Q.Q8_0)],
     "v,down q8_0": [("v_proj", ALL, Q.Q8_0), ("down_proj", ALL, Q.Q8_0)],
     "v,down,gate q8_0": [("v_proj", ALL, Q.Q8_0), ("down_proj", ALL, Q.Q8_0), ("gate_proj", ALL, Q.Q8_0)],
     "v q8_0, down,gate q5_0": [("v_proj", ALL, Q.Q8_0), ("down_proj", ALL, Q.Q5_0), ("gate_proj", ALL, Q.Q5_0)],
     "v,down q8_0, gate,up q5_0": [("v_proj", ALL, Q.Q8_0), ("down_proj", ALL, Q.Q8_0), ("gate_proj", ALL, Q.Q5_0), ("up_proj", ALL, Q.Q5_0)],
     "v,down,gate q8_0 more_bits, rest of them q5_0": [("v_proj", ALL, Q.Q8_0), ("down_proj", MB, Q.Q8_0), ("gate_proj", MB, Q.Q8_0), ("down_proj", ALL, Q.Q5_0), ("gate_proj", ALL, Q.Q5_0)],
    }
    for label, rules in V.items():
        run2(mix(rules), label)
if mode == "mix2":
    Q5, Q8 = Q.Q5_0, Q.Q8_0
    V = {
     "q5_0 all (head q8_0)": [(k, ALL, Q5) for k in ["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]],
     "q4_1 all (head q8_0)": [(k, ALL, Q.Q4_1) for k in ["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]],
     "A v q8; o,gate,down q5": [("v_proj", ALL, Q8), ("o_proj", ALL, Q5), ("gate_proj", ALL, Q5), ("down_proj", ALL, Q5)],
     "C v q8; gate,up,down q5": [("v_proj", ALL, Q8), ("gate_proj", ALL, Q5), ("up_proj", ALL, Q5), ("down_proj", ALL, Q5)],
     "E v q8; down,gate q8 MB/q5; up q5": [("v_proj", ALL, Q8), ("down_proj", MB, Q8), ("gate_proj", MB, Q8), ("down_proj", ALL, Q5), ("gate_proj", ALL, Q5), ("up_proj", ALL, Q5)],
     "G v,down q8 MB/q5; gate,up q5": [("v_proj", MB, Q8), ("v_proj", ALL, Q5), ("down_proj", MB, Q8), ("down_proj", ALL, Q5), ("gate_proj", ALL, Q5), ("up_proj", ALL, Q5)],
     "H v q8; down q8 MB/q5; gate,up,o q5": [("v_proj", ALL, Q8), ("down_proj", MB, Q8), ("down_proj", ALL, Q5), ("gate_proj", ALL, Q5), ("up_proj", ALL, Q5), ("o_proj", ALL, Q5)],
    }
    for label, rules in V.items():
        run2(mix(rules), label)
if mode == "mix3":
    Q5, Q8 = Q.Q5_0, Q.Q8_0
    V = {
     "I v q8; o,gate,up,down q5": [("v_proj", ALL, Q8), ("o_proj", ALL, Q5), ("gate_proj", ALL, Q5), ("up_proj", ALL, Q5), ("down_proj", ALL, Q5)],
     "K v q8 MB/q5; o,gate,up,down q5": [("v_proj", MB, Q8), ("v_proj", ALL, Q5), ("o_proj", ALL, Q5), ("gate_proj", ALL, Q5), ("up_proj", ALL, Q5), ("down_proj", ALL, Q5)],
     "J v q8; down q8 MB/q5; o,gate q5": [("v_proj", ALL, Q8), ("down_proj", MB, Q8), ("down_proj", ALL, Q5), ("o_proj", ALL, Q5), ("gate_proj", ALL, Q5)],
     "N v q8; o,down q5": [("v_proj", ALL, Q8), ("o_proj", ALL, Q5), ("down_proj", ALL, Q5)],
    }
    for label, rules in V.items():
        run2(mix(rules), label)
if mode == "mix4":
    Q5, Q8 = Q.Q5_0, Q.Q8_0
    EDGE = lambda i: i < L//8 or i >= 7*L//8
    FIRST = lambda i: i < L//8
    V = {
     "R v q8; down q8 edge/q5; o,gate q5": [("v_proj", ALL, Q8), ("down_proj", EDGE, Q8), ("down_proj", ALL, Q5), ("o_proj", ALL, Q5), ("gate_proj", ALL, Q5)],
     "P v q8; down q8 first/q5; o,gate q5": [("v_proj", ALL, Q8), ("down_proj", FIRST, Q8), ("down_proj", ALL, Q5), ("o_proj", ALL, Q5), ("gate_proj", ALL, Q5)],
     "T v q8; down q8 MB/q5; o q5": [("v_proj", ALL, Q8), ("down_proj", MB, Q8), ("down_proj", ALL, Q5), ("o_proj", ALL, Q5)],
    }
    for label, rules in V.items():
        run2(mix(rules), label)
