"""The model a command reads (eval.checkpoint_path), loaded once and checked against the command line."""
from __future__ import annotations

from pathlib import Path

import torch

from duolm.checkpoints.loading import BUILTIN_PREFIX, load_pretrained, looks_like_hub_id
from duolm.core.methods import same_model


def device() -> str:
    """Where a command runs a loaded model: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_path(cfg) -> str:
    """eval.checkpoint_path, or the model the run in run.dir wrote."""
    return str(cfg.eval.checkpoint_path or Path(cfg.run.dir) / "model")


def load_for_eval(cfg):
    """(the model at eval.checkpoint_path, the device it was moved to). Keys given on the command
    line (cfg.given) are hints for the papers' files: algo, model.n_heads and data.tokenizer."""
    path = model_path(cfg)
    if not path.startswith(BUILTIN_PREFIX) and not Path(path).exists() and not looks_like_hub_id(path):
        raise FileNotFoundError(f"eval.checkpoint_path: {path} does not exist (train first, or point it at a "
                                f"duolm model directory, a run's .ckpt, or the papers' checkpoints)")
    given = set(cfg.given)
    asked_algo = "algo" in given or "algo.name" in given
    asked_tok = "data.tokenizer" in given
    pre = load_pretrained(path, algo=cfg.algo.name if asked_algo else None, use_ema=cfg.eval.use_ema,
                          tokenizer=cfg.data.tokenizer if asked_tok else "gpt2",
                          n_heads=cfg.model.n_heads if given & {"model", "model.n_heads"} else None)
    if asked_algo and not same_model(cfg.algo.name, pre.config["algo"]["name"]):
        raise ValueError(f"{path} holds a {pre.config['algo']['name']} model, but algo={cfg.algo.name} was asked")
    have_tok = pre.config["tokenizer"].get("name", pre.config["tokenizer"].get("type"))
    if asked_tok and cfg.data.tokenizer != have_tok:
        raise ValueError(f"{path} was trained with the {have_tok!r} tokenizer "
                         f"({pre.tokenizer.vocab_size} tokens), but data.tokenizer={cfg.data.tokenizer} was asked")
    where = device()
    pre.backbone.to(where)
    return pre, where


def unit_of(pre) -> str:
    """What one token of a loaded model is, for the likelihood line: a char, a pixel or a token."""
    return {"char": "char", "pixels": "pixel"}.get(pre.config["tokenizer"].get("type"), "token")


def data_given(cfg) -> bool:
    """Whether the command line chose the data (else an image model's own data is used)."""
    return bool(set(cfg.given) & {"data", "data.source"})


def perplexity_line(name: str, ev: dict, baseline_bits: float | None, unit: str = "token") -> str:
    line = (f"{name}: {ev['nll']:.4f} +- {ev['nll_se']:.4f} nats/{unit} = {ev['bits_per_token']:.3f} bits/{unit}, "
            f"perplexity {ev['ppl']:.2f}")
    if baseline_bits is not None:
        line += f" (token frequencies alone: {baseline_bits:.3f} bits/{unit})"
    if "response_nll" in ev:  # instruction records: say what was scored, and the response alone beside it
        line += (f"\n  scored: {ev['scored']}; the responses alone (up to their first EOS, {ev['response_tokens']} "
                 f"{unit}s): {ev['response_nll']:.4f} nats/{unit}, perplexity {ev['response_ppl']:.2f}")
    return line
