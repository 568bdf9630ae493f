"""Autoregressive sampling with a key-value cache."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from duolm.models.dit import KVCache


@torch.no_grad()
def ar_sample(backbone, batch: int, length: int, bos_id: int, *, generator=None, device=None,
              use_cache: bool = True, disable_progress: bool = True, vocab_size: int | None = None) -> torch.Tensor:
    """Sample (batch, length) tokens starting from BOS; with the cache each step costs one position.

    vocab_size drops extra output rows (the papers' AR has one for its mask token)."""
    x = torch.full((batch, 1), bos_id, dtype=torch.long, device=device)
    caches = [KVCache() for _ in backbone.blocks] if use_cache else None
    for i in tqdm(range(length - 1), disable=disable_progress, desc="sampling"):
        if use_cache:
            logits = backbone(x[:, -1:] if i else x, kv_caches=caches, position_offset=i)
        else:
            logits = backbone(x)
        probs = logits[:, -1, :vocab_size].double().softmax(-1)
        nxt = torch.multinomial(probs, 1, generator=generator)
        x = torch.cat([x, nxt], dim=1)
    return x
