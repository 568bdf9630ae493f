"""The validation NELBO per token (exact NLL for AR) of a backbone, with its Monte Carlo standard error."""
from __future__ import annotations

import math

import torch

from duolm.conditioning import with_labels
from tqdm.auto import tqdm


@torch.no_grad()
def evaluate_nelbo(method, backbone, ids, valid: torch.Tensor | None = None, *, batch_size: int = 32,
                   time_samples: int = 1, max_batches: int | None = None, seed: int = 0,
                   device=None, progress: bool = False) -> dict:
    """Average of the per-token NELBO over a split, with t drawn `time_samples` times per sequence.

    The standard error is over sequences (each sequence's NELBO is one Monte
    Carlo draw); for AR it reflects only the spread between sequences. ids: (N, L) token ids with
    their valid mask, or a store split (duolm.data.store.Split), read a batch at a time. A
    class-conditional network is given each image's label (an image split carries them), so the
    figure is the conditional NELBO.
    """
    conditional = getattr(getattr(backbone, "config", None), "num_classes", 0) > 0

    def batch(a: int, b: int):
        if valid is None:
            x, v = ids.blocks(a, b)
            return x, v, (ids.labels(a, b) if conditional else None)
        return ids[a:b], valid[a:b], None

    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    backbone.eval()
    per_seq, tokens = [], []
    n_batches = math.ceil(len(ids) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in tqdm(range(n_batches), disable=not progress, desc="eval"):
        x0, v, labels = batch(b * batch_size, (b + 1) * batch_size)
        x0, v = x0.to(device), v.to(device)
        net = with_labels(backbone, None if labels is None else labels.to(device))
        total = 0.0
        for _ in range(time_samples):
            out = method.token_loss(net, x0, v, generator=g)
            prior = method.prior_kl(x0).to(out.nll.device)
            total = total + ((out.nll.double() + prior.double()) * out.weight).sum(-1) / time_samples
        per_seq.append(total.cpu())
        tokens.append(out.weight.sum(-1).double().cpu())
    per_seq, tokens = torch.cat(per_seq), torch.cat(tokens)
    nll = float(per_seq.sum() / tokens.sum())
    # standard error of a ratio estimator: per-sequence NELBO per token, weighted by length
    ratio = per_seq / tokens.clamp_min(1)
    se = float(ratio.std() / math.sqrt(max(1, len(ratio) - 1))) if len(ratio) > 1 else float("nan")
    return {"nll": nll, "nll_se": se, "bits_per_token": nll / math.log(2), "ppl": math.exp(min(nll, 50)),
            "sequences": len(per_seq), "tokens": int(tokens.sum()), "time_samples": time_samples}
