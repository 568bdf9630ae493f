"""Statistics of token frequencies: the entropy a model must beat."""
from __future__ import annotations

import math

import torch


def entropy_of_counts(counts) -> float:
    """Entropy in nats of the frequencies `counts` (a tensor or array of occurrence counts)."""
    p = torch.as_tensor(counts).double()
    p = p / p.sum()
    return float(-torch.xlogy(p, p).sum())


def unigram_entropy_bits(split, vocab_size: int) -> float:
    """Entropy of the token frequencies of a split (data.store.Split), bits per token: the baseline any model must beat."""
    return entropy_of_counts(split.token_counts(vocab_size)) / math.log(2)
