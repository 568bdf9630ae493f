"""Autoregressive sampling with a key-value cache."""
from __future__ import annotations

import torch

from duolm.io.progress import progress_bar
from duolm.sampling.observers import NOTHING, Observer


@torch.no_grad()
def ar_sample(backbone, batch: int, length: int, bos_id: int, *, generator=None, device=None,
              use_cache: bool = True, disable_progress: bool = True, vocab_size: int | None = None,
              prompt=None) -> torch.Tensor:
    """Sample (batch, length) tokens starting from BOS (or from `prompt`, token ids that start
    with BOS); with the cache each step costs one position (the backbone's new_cache()).

    vocab_size drops extra output rows (the papers' AR has one for its mask token)."""
    if prompt is None:
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
        probs = logits[:, -1, :vocab_size].double().softmax(-1)
        nxt = torch.multinomial(probs, 1, generator=generator)
        x = torch.cat([x, nxt], dim=1)
    return x


def from_spec(model, spec, shape, *, bos_id: int, fixed=None, generator=None, device=None,
              disable_progress: bool = True, observer: Observer = NOTHING):
    """The registry's adapter: sampling.prefix (BOS first) is the prompt."""
    return ar_sample(model.backbone, shape[0], shape[1], bos_id, use_cache=model.backbone.capabilities.kv_cache,
                     generator=generator, device=device, disable_progress=disable_progress,
                     vocab_size=model.vocab_size, prompt=spec.prefix)
