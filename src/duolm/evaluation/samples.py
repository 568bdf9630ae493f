"""Sample-quality measures that need no judge model."""
from __future__ import annotations

import torch


def unigram_entropy(x: torch.Tensor) -> torch.Tensor:
    """(n,) entropy in nats of each sample's own token histogram, as the papers report it.

    Repetitive, collapsed samples score low; samples as varied as the data score like the data.
    """
    if x.dim() != 2:
        raise ValueError(f"expected (n, L) token ids, got shape {tuple(x.shape)}")
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for i, row in enumerate(x):
        counts = torch.unique(row, return_counts=True)[1].double()
        p = counts / counts.sum()
        out[i] = -(p * p.log()).sum()
    return out
