"""Rows of different lengths in one key-value cache (`Capabilities.ragged_rows`): the arithmetic the
DiT's and model=hf's caches share. Each row's tokens end at the cache's last slot; `starts` (B,) is
the slot of each row's first token, the slots before it padding that no call reads."""
from __future__ import annotations

import torch

KV = tuple[torch.Tensor, torch.Tensor] | None  # one layer's (keys, values), (B, heads, S, head_dim); None: unwritten


def join_rows(mine: list[KV], rows: int, length: int, starts: torch.Tensor | None,
              theirs: list[KV], other_rows: int, other_length: int, other_starts: torch.Tensor | None
              ) -> tuple[list[KV], torch.Tensor]:
    """Two caches' layers as one: `mine` (rows x length slots) followed by `theirs`, the shorter
    left-padded with zeros so both end at the same slot; (per-layer (keys, values) or None while
    nothing is written, the rows' starts)."""
    width = max(length, other_length)
    like = next((kv[0] for kv in (*mine, *theirs) if kv is not None), None)

    def padded(t, count, have):
        if t is None:
            return like.new_zeros(count, like.shape[1], width, like.shape[3])
        return t if have == width else torch.cat([t.new_zeros(count, t.shape[1], width - have, t.shape[3]), t], 2)

    layers: list[KV] = []
    for i in range(max(len(mine), len(theirs))):
        if like is None:
            layers.append(None)
            continue
        a = mine[i] if i < len(mine) and mine[i] is not None else (None, None)
        b = theirs[i] if i < len(theirs) and theirs[i] is not None else (None, None)
        layers.append(tuple(torch.cat([padded(x, rows, length), padded(y, other_rows, other_length)])
                            for x, y in zip(a, b)))
    device = like.device if like is not None else None

    def starts_of(s, count, have):
        s = s if s is not None else torch.zeros(count, dtype=torch.long)
        return s.to(device) + (width - have)

    return layers, torch.cat([starts_of(starts, rows, length), starts_of(other_starts, other_rows, other_length)])


def common_padding(starts: torch.Tensor | None) -> int:
    """How many leading slots every row pads (0 without starts or rows): what a cache may drop."""
    if starts is None or not len(starts):
        return 0
    return int(starts.min())


__all__ = ["KV", "common_padding", "join_rows"]
