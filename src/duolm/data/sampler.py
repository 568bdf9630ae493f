"""An endless, seeded, shardable sampler whose position survives a restart.

Example j of the stream is element j of the concatenation of seeded
permutations (one per epoch), so the data position is a single integer: a
resumed run sets ``start`` to the number of examples this rank already consumed.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, n: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        if n < 1:
            raise ValueError("the training split has no blocks")
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.start = 0  # examples of the global stream already consumed, in units of global positions

    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self):
        j = self.start + self.rank  # global stream position; ranks interleave
        epoch, perm = -1, None
        while True:
            e = j // self.n
            if e != epoch:
                epoch, perm = e, self._perm(e)
            yield int(perm[j % self.n])
            j += self.world_size
