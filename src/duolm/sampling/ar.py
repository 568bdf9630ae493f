"""Autoregressive sampling with a key-value cache."""
from __future__ import annotations

import torch

from duolm.core.randomness import multinomial
from duolm.io.progress import progress_bar
from duolm.sampling.observers import NOTHING, Observer


def _held_start(fixed, batch: int, bos_id: int, device) -> torch.Tensor:
    """The tokens every row holds from position 0 on (at least the BOS): what the first call reads."""
    mask, values = (f.to(device) for f in fixed)
    common = mask.all(0)
    start = int(common.long().cumprod(0).sum()) if mask.shape[1] else 0
    if start == 0:
        return torch.full((batch, 1), bos_id, dtype=torch.long, device=device)
    return values[:, :start].clone()


def next_token(logits: torch.Tensor, temperature: float = 1.0, generator=None) -> torch.Tensor:
    """(B, 1) draws from logits (B, V) at `temperature` (0: the argmax, no draw), in float64."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = (logits.double() / temperature).softmax(-1)
    return multinomial(probs, 1, generator)


@torch.no_grad()
def ar_sample(backbone, batch: int, length: int, bos_id: int, *, generator=None, device=None,
              use_cache: bool = True, disable_progress: bool = True, vocab_size: int | None = None,
              prompt=None, fixed=None, temperature: float = 1.0, observer: Observer = NOTHING) -> torch.Tensor:
    """Sample (batch, length) tokens starting from BOS (or from `prompt`, token ids that start
    with BOS); with the cache each step costs one position (the backbone's new_cache()).

    fixed: (mask, values), each (batch, <= length): tokens each row holds (its own prompt, of any
    length; any held position): the positions every row holds from the start are read in the first
    call, and past them a held token replaces the row's draw (the draw is still made, so a row's
    draws do not depend on what other rows hold). vocab_size drops extra output rows (the papers'
    AR has one for its mask token). temperature: the next token's logits / T (0: the argmax). The
    observer gets the number of network calls (denoiser_calls)."""
    if fixed is not None:
        x = _held_start(fixed, batch, bos_id, device)
        mask, values = (f.to(x.device) for f in fixed)
    elif prompt is None:
        x = torch.full((batch, 1), bos_id, dtype=torch.long, device=device)
    else:
        x = torch.as_tensor(prompt, dtype=torch.long, device=device).reshape(1, -1).expand(batch, -1).clone()
    cache = backbone.new_cache() if use_cache else None
    start = x.shape[1]
    for i in progress_bar(range(length - start), disable=disable_progress, desc="sampling"):
        if use_cache:
            pos = x.shape[1] - 1
            logits = backbone(x[:, -1:] if i else x, cache=cache, position_offset=pos if i else 0)
        else:
            logits = backbone(x)
        nxt = next_token(logits[:, -1, :vocab_size], temperature, generator)
        at = x.shape[1]
        if fixed is not None and at < mask.shape[1]:
            nxt = torch.where(mask[:, at:at + 1], values[:, at:at + 1], nxt)
        x = torch.cat([x, nxt], dim=1)
    observer.report(denoiser_calls=max(length - start, 0), cached_calls=0)
    return x


def from_spec(model, spec, shape, *, bos_id: int, fixed=None, generator=None, device=None,
              disable_progress: bool = True, observer: Observer = NOTHING):
    """The registry's adapter: sampling.prefix (BOS first) is the prompt; `fixed`, each row's held tokens."""
    return ar_sample(model.backbone, shape[0], shape[1], bos_id, use_cache=model.backbone.capabilities.kv_cache,
                     generator=generator, device=device, disable_progress=disable_progress,
                     vocab_size=model.vocab_size, prompt=spec.prefix if fixed is None else None, fixed=fixed,
                     temperature=model.temperature, observer=observer)
