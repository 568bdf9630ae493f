"""The validation NELBO per token (exact NLL for AR) of a backbone, with its Monte Carlo standard error."""
from __future__ import annotations

import math

import torch

from duolm.core.conditioning import with_labels
from duolm.io.progress import progress_bar


@torch.no_grad()
def evaluate_nelbo(method, backbone, ids, valid: torch.Tensor | None = None, *, batch_size: int = 32,
                   time_samples: int = 1, max_batches: int | None = None, seed: int = 0,
                   device=None, progress: bool = False, eos_id: int | None = None) -> dict:
    """Average of the per-token NELBO over a split, with t drawn `time_samples` times per sequence.

    The standard error is over sequences (each sequence's NELBO is one Monte
    Carlo draw); for AR it reflects only the spread between sequences. ids: (N, L) token ids with
    their valid mask, or a store split (duolm.data.store.Split), read a batch at a time. A
    class-conditional network is given each image's label (an image split carries them), so the
    figure is the conditional NELBO; a split of instruction records scores each response (and the
    EOS that ends its block) given its prompt, held clean; with eos_id it also reports, from the same
    draws, the terms of the response positions alone (each response up to its first EOS, not the EOS
    padding after it: `response_nll`, a diagnostic the padding-weighted figure dilutes, not a bound).
    """
    conditional = backbone.capabilities.class_conditioning

    def batch(a: int, b: int):
        if valid is None:
            if getattr(ids, "has_prompts", False):  # instruction records: the response given its prompt
                return ids.blocks_with_prompts(a, b) + (None,)
            x, v = ids.blocks(a, b)
            return x, v, None, (ids.labels(a, b) if conditional else None)
        return ids[a:b], valid[a:b], None, None

    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    backbone.eval()
    per_seq, tokens = [], []
    response_total, response_count = 0.0, 0.0
    n_batches = math.ceil(len(ids) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in progress_bar(range(n_batches), disable=not progress, desc="eval"):
        x0, v, clean, labels = batch(b * batch_size, (b + 1) * batch_size)
        x0, v = x0.to(device), v.to(device)
        clean = None if clean is None else clean.to(device)
        net = with_labels(backbone, None if labels is None else labels.to(device))
        total = 0.0
        response = None
        if clean is not None and eos_id is not None:  # up to the first EOS after the prompt
            ends = (x0 == eos_id) & v.bool()
            response = v.bool() & ((ends.long().cumsum(1) - ends.long()) == 0)
        for _ in range(time_samples):
            terms = method.nelbo_terms(net, x0, v, generator=g, clean=clean)
            total = total + (terms.nll * terms.weight).sum(-1) / time_samples
            if response is not None:
                aligned = response[:, response.shape[1] - terms.nll.shape[1]:]  # AR scores positions 1 .. L - 1
                response_total += float((terms.nll * aligned).sum()) / time_samples
        count = terms.weight.sum(-1).double()
        if response is not None:
            response_count += float(response[:, response.shape[1] - terms.nll.shape[1]:].sum())
        per_seq.append(total.cpu())
        tokens.append(count.cpu())
    per_seq, tokens = torch.cat(per_seq), torch.cat(tokens)
    nll = float(per_seq.sum() / tokens.sum())
    # standard error of a ratio estimator: per-sequence NELBO per token, weighted by length
    ratio = per_seq / tokens.clamp_min(1)
    se = float(ratio.std() / math.sqrt(max(1, len(ratio) - 1))) if len(ratio) > 1 else float("nan")
    out = {"nll": nll, "nll_se": se, "bits_per_token": nll / math.log(2), "ppl": math.exp(min(nll, 50)),
           "sequences": len(per_seq), "tokens": int(tokens.sum()), "time_samples": time_samples}
    if response_count:
        r = response_total / response_count
        out.update(scored="each response and the EOS padding of its block, given its prompt", response_nll=r,
                   response_ppl=math.exp(min(r, 50)), response_tokens=int(response_count))
    return out


def windows(context: list[int], continuation: list[int], length: int) -> list[tuple[list[int], int]]:
    """The (window ids, number of scored tokens at its end) that cover `continuation` given `context`.

    Each window holds at most `length` tokens: as much of the preceding text as fits, then up to
    `length - 1` new tokens (at least one token of context stays, so a diffusion model is never
    asked to score a window from nothing; the first context is usually the BOS token).
    """
    if not context:
        raise ValueError("a continuation is scored given at least one context token (the BOS token)")
    out, done = [], 0
    while done < len(continuation):
        new = continuation[done:done + length - 1]
        before = (context + continuation[:done])[-(length - len(new)):]
        out.append((before + new, len(new)))
        done += len(new)
    return out


@torch.no_grad()
def continuation_nelbo(method, backbone, pairs: list[tuple[list[int], list[int]]], *, length: int, pad_id: int,
                       num_samples: int = 8, seed: int = 0, batch_size: int = 16, device=None) -> list[dict]:
    """-log p(continuation | context) of each (context ids, continuation ids) pair, in nats.

    AR: the exact NLL. Diffusion: the NELBO of the continuation's tokens with the context held
    clean (never noised), averaged over `num_samples` draws of (t, x_t); 'se' is its Monte Carlo
    standard error over those draws. Positions after the text in its window are padding, noised
    and not scored, so the bound is on the text followed by anything. Texts longer than the
    model are scored window by window (`windows`), each new chunk given the text before it.
    Returns [{'nelbo', 'se', 'tokens'}], one per pair.
    """
    jobs = []  # (pair index, window ids, scored count)
    for i, (ctx, cont) in enumerate(pairs):
        jobs += [(i, ids, n) for ids, n in windows(list(ctx), list(cont), length)]
    draws = torch.zeros(len(pairs), num_samples, dtype=torch.float64)
    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    backbone.eval()
    for a in range(0, len(jobs), batch_size):
        chunk = jobs[a:a + batch_size]
        x0 = torch.full((len(chunk), length), pad_id, dtype=torch.long)
        scored = torch.zeros(len(chunk), length, dtype=torch.bool)
        clean = torch.zeros_like(scored)
        for r, (_, ids, n) in enumerate(chunk):
            x0[r, :len(ids)] = torch.tensor(ids)
            scored[r, len(ids) - n:len(ids)] = True
            clean[r, :len(ids) - n] = True
        x0, scored, clean = x0.to(device), scored.to(device), clean.to(device)
        rows = torch.tensor([i for i, _, _ in chunk])
        for k in range(num_samples if not method.exact_likelihood else 1):
            per = method.sequence_nelbo(backbone, x0, scored.float(), generator=g, clean=clean)[0].cpu()
            if method.exact_likelihood:  # AR: exact; every draw is the same number
                draws[:, :].index_add_(0, rows, per[:, None].expand(-1, num_samples))
                break
            draws[:, k].index_add_(0, rows, per)
    results = []
    for i, (_, cont) in enumerate(pairs):
        d = draws[i]
        se = float(d.std() / math.sqrt(num_samples)) if num_samples > 1 and not method.exact_likelihood else 0.0
        results.append({"nelbo": float(d.mean()), "se": se, "tokens": len(cont)})
    return results
