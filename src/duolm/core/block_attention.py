"""Who may attend to whom in block diffusion (BD3-LM): the masks and rotary positions of its two passes.

A sequence of L tokens is cut into blocks of `block_size`. The model is autoregressive over blocks
and a diffusion model inside each. Training runs one pass over x_t ⊕ x_0 (length 2L): a noisy token
sees its own noisy block (both ways) and the clean blocks before it; a clean token sees the clean
blocks up to its own (block-causal); nothing sees a noisy token of another block. Both halves take
rotary positions 0 .. L-1, so the clean copy of block b is where a cache would hold it. Sampling
runs block by block: the new block attends to the cached clean blocks and to itself, with no mask
(the last rows of the training pass's mask), so one forward serves both and the cache is exact.
"""
from __future__ import annotations

import torch


def block_ids(length: int, block_size: int, device=None) -> torch.Tensor:
    """(length,) the block each position belongs to."""
    return torch.arange(length, device=device) // block_size


def block_causal_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    """(length, length) bool, True = may attend: a position sees every position of its block and the
    blocks before it. The clean half of training, and a cache-free pass over clean blocks plus one
    noisy block."""
    b = block_ids(length, block_size, device)
    return b[None, :] <= b[:, None]


def block_diffusion_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    """(2·length, 2·length) bool, True = may attend, over x_t ⊕ x_0 (queries are rows):

        x_t → x_t: the query's own block        x_t → x_0: the blocks strictly before it
        x_0 → x_0: its block and those before   x_0 → x_t: never
    """
    b = block_ids(length, block_size, device)
    same = b[None, :] == b[:, None]
    before = b[None, :] < b[:, None]
    upto = same | before
    never = torch.zeros_like(same)
    return torch.cat([torch.cat([same, before], dim=1), torch.cat([never, upto], dim=1)], dim=0)


def training_positions(length: int, device=None) -> torch.Tensor:
    """(2·length,) rotary positions of x_t ⊕ x_0: both halves at 0 .. length-1."""
    p = torch.arange(length, device=device)
    return torch.cat([p, p])
