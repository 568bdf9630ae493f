"""Exact-match accuracy of a model on prompts with a verifier (sudoku, countdown, arithmetic, or any
scorer): one sampled completion per prompt, with its standard error.

    acc = verified_accuracy(pre.method, pre.backbone, pre.tokenizer, records, TASKS["sudoku"].verify, spec,
                            length=64)
    acc["accuracy"], acc["se"]

The prompts are framed as supervised fine-tuning framed them ([BOS] prompt); a completion is the
tokens after the prompt up to its first EOS, decoded. Every model samples a batch of prompts in one
call, each row holding its own prompt (duolm.rl.groups; DiffusionGemma left-padded, as transformers
pads a batch).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from duolm.data.instructions import prompt_ids
from duolm.rl.groups import sample_groups


def verified_accuracy(method, backbone, tokenizer, records: list[dict], verify: Callable[[dict, str], float], spec, *,
                      length: int, batch_size: int = 64, seed: int = 0, device=None) -> dict:
    """{'accuracy', 'se' (binomial standard error), 'n', 'seconds', 'examples' (the first 3 completions)}.
    A completion is correct when verify(record, text) >= 1."""
    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    correct, examples = [], []
    t0 = time.perf_counter()
    for a in range(0, len(records), batch_size):
        chunk = records[a:a + batch_size]
        prompts = [prompt_ids(tokenizer, prompt=r["prompt"]) for r in chunk]
        groups = sample_groups(method, backbone, prompts, 1, length, spec, bos_id=tokenizer.bos_id,
                               eos_id=tokenizer.eos_id, generator=g, device=device)
        for record, text in zip(chunk, groups.texts(tokenizer)):
            correct.append(float(verify(record, text)) >= 1.0)
            if len(examples) < 3:
                examples.append({"prompt": record["prompt"], "completion": text, "correct": correct[-1]})
    n = len(correct)
    acc = sum(correct) / max(n, 1)
    return {"accuracy": acc, "se": math.sqrt(acc * (1 - acc) / max(n, 1)), "n": n,
            "seconds": time.perf_counter() - t0, "examples": examples}


__all__ = ["verified_accuracy"]
