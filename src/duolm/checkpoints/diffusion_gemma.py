"""A transformers DiffusionGemma folder (config.json with model_type diffusion_gemma) as a duolm model.

    pre = load_pretrained("path/to/diffusiongemma")    # -> Pretrained(DiffusionGemma, method, tokenizer, config)

The network is transformers' own (duolm.models.diffusion_gemma); the method is Duo's uniform-state
diffusion in blocks of the model's canvas (algo duo, block_size = canvas_length, no time
conditioning, over the model's whole vocabulary: the canvas starts from uniform tokens of every id
the network has, as generate() draws it). The model has no noise-level input, so its likelihood
bound depends on a schedule that nothing in the folder states: duolm assumes linear
alpha_t = 1 - t (the log-linear schedule with eps 0; the one diffusers' discrete schedulers for it
document) and records it in the config as `noise`, which every result copies. The tokenizer is
the folder's.
"""
from __future__ import annotations

from pathlib import Path

from duolm.checkpoints.duolm_format import Pretrained, training_of
from duolm.core.methods import build_method
from duolm.core.schedules import make_schedule
from duolm.data.tokenizers import HFTokenizer
from duolm.errors import SettingError
from duolm.models.diffusion_gemma import DiffusionGemma

# the schedule a DiffusionGemma likelihood assumes unless told otherwise: alpha_t = 1 - t
ASSUMED_NOISE = {"type": "log-linear", "eps": 0.0}
FORMAT = "transformers/diffusion_gemma"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def folder_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise SettingError(f"`load_pretrained.path`={str(folder)!r}: a DiffusionGemma folder needs its tokenizer "
                           f"files beside config.json (one of {', '.join(TOKENIZER_FILES)}); none is there")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as err:
        raise SettingError(f"`load_pretrained.path`={str(folder)!r}: a DiffusionGemma folder needs its tokenizer "
                           f"files beside config.json ({type(err).__name__})") from None
    return HFTokenizer(tok, str(folder))


def from_diffusion_gemma_folder(folder, *, noise: dict | None = None, attn_implementation: str = "sdpa") -> Pretrained:
    """The folder's network, Duo's method over its canvases, its tokenizer; noise: the schedule the
    likelihood assumes (default ASSUMED_NOISE)."""
    folder = Path(folder)
    backbone = DiffusionGemma.from_folder(folder, attn_implementation=attn_implementation)
    tokenizer = folder_tokenizer(folder)
    noise = dict(noise or ASSUMED_NOISE)
    vocab = backbone.config.vocab_size
    canvas = backbone.canvas_length
    method = build_method("duo", vocab, schedule=make_schedule(noise["type"], noise["eps"]), block_size=canvas,
                          time_conditioning=False)
    config = {"format": FORMAT, "algo": {"name": "duo", "block_size": canvas, "time_conditioning": False},
              "model": backbone.config.to_dict(), "noise": noise, "tokenizer": tokenizer.to_dict(), "length": canvas,
              "training": training_of(method), "source": str(folder)}
    return Pretrained(backbone.eval(), method, tokenizer, config)


__all__ = ["ASSUMED_NOISE", "FORMAT", "folder_tokenizer", "from_diffusion_gemma_folder"]
