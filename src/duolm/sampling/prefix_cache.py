"""Fast-dLLM's approximate key-value cache for a whole-sequence masked model decoded block by block.

A whole-sequence (bidirectional) model has no exact cache: every key depends on every token, and
the tokens of the block being decoded change at each step. Fast-dLLM (NVlabs/Fast-dLLM) reuses the
keys and values anyway: at the first step of each generation block one full call computes every
position's keys and values; the block's later steps run only

- ``prefix``: the block and everything after it as queries, over the cached keys of the positions
  before the block;
- ``dual``: the block alone as queries, over the cached keys before and after it.

The cached keys are those the first call saw, so the logits are approximate from the second layer
on (the first layer's keys depend only on tokens that do not change inside a block, so a one-layer
network's cached logits are exact: tests/test_prefix_cache.py checks that draw for draw and
measures the error of a deeper one). Block diffusion models (algo.block_size) need none of this:
their cache is exact (duolm.sampling.blocks).
"""
from __future__ import annotations

import torch

from duolm.conditioning import with_labels
from duolm.models.dit import KVCache
from duolm.sampling.ancestral import denoiser_from

CACHE_MODES = ("none", "prefix", "dual")


class ApproximateCache:
    """predict(x, alpha, start, end, refresh) -> log p(x_0 | x_t) (B, L, K) whose rows [start, end)
    are the ones to read (the others are the refresh call's, or zero). refresh: the block's first
    step, a full call that stores every position's keys and values."""

    def __init__(self, method, backbone, mode: str, labels=None):
        if mode not in ("prefix", "dual"):
            raise ValueError(f"sampling.confidence.cache must be one of {list(CACHE_MODES)}, got {mode!r}")
        if not isinstance(getattr(backbone, "new_kv_caches", lambda: None)(), list):  # per-layer K/V it can slice
            raise ValueError("sampling.confidence.cache needs the DiT's key-value cache, whose positions it slices; "
                             "this backbone has none of that kind (model=hf: use cache=none)")
        self.method, self.backbone, self.mode, self.labels = method, backbone, mode, labels
        self.full: list[KVCache] | None = None
        self.query_positions = 0  # per sequence, summed over calls: what the cache saves

    def _denoise(self, net, x, alpha):
        return denoiser_from(self.method, with_labels(net, self.labels))(x, alpha)

    def predict(self, x, alpha, start: int, end: int, refresh: bool) -> torch.Tensor:
        B, L = x.shape
        if refresh or self.full is None:
            caches = self.backbone.new_kv_caches()

            def storing(inp, sigma, weights=None, class_cond=None):
                return self.backbone(inp, sigma, weights=weights, kv_caches=caches, store_kv=True,
                                     class_cond=class_cond)

            out = self._denoise(storing, x, alpha)
            self.full = caches
            self.query_positions += L
            return out
        stop = L if self.mode == "prefix" else end

        def outside(t):  # (B, nh, L, hd) -> the cached positions this call reads instead of computing
            return t[:, :, :start] if self.mode == "prefix" else torch.cat([t[:, :, :start], t[:, :, end:]], 2)

        kept = []
        for c in self.full:
            kc = KVCache()
            kc.k, kc.v = outside(c.k), outside(c.v)
            kept.append(kc)

        def cached(inp, sigma, weights=None, class_cond=None):
            return self.backbone(inp, sigma, weights=weights, kv_caches=kept, position_offset=start, store_kv=False,
                                 class_cond=class_cond)

        part = self._denoise(cached, x[:, start:stop], alpha)  # (B, stop - start, K)
        self.query_positions += stop - start
        out = part.new_zeros(B, L, part.shape[-1])
        out[:, start:stop] = part
        return out


__all__ = ["ApproximateCache", "CACHE_MODES"]
