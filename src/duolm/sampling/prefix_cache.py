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

from duolm.core.conditioning import with_labels
from duolm.errors import SettingError
from duolm.sampling.ancestral import denoiser_from

CACHE_MODES = ("none", "prefix", "dual")


class ApproximateCache:
    """predict(x, alpha, start, end, refresh) -> log p(x_0 | x_t) (B, L, K) whose rows [start, end)
    are the ones to read (the others are the refresh call's, or zero). refresh: the block's first
    step, a full call that stores every position's keys and values."""

    def __init__(self, method, backbone, mode: str, labels=None):
        if mode not in ("prefix", "dual"):
            raise SettingError(f"`ConfidenceOptions.cache` must be one of {list(CACHE_MODES)}, got {mode!r}")
        backbone.capabilities.require("kv_cache", "`ConfidenceOptions.cache` (Fast-dLLM's approximate cache)")
        self.method, self.backbone, self.mode, self.labels = method, backbone, mode, labels
        self.full = None  # the refresh call's KVCache
        self.query_positions = 0  # per sequence, summed over calls: what the cache saves

    def _denoise(self, net, x, alpha):
        return denoiser_from(self.method, with_labels(net, self.labels))(x, alpha)

    def predict(self, x, alpha, start: int, end: int, refresh: bool) -> torch.Tensor:
        B, L = x.shape
        if refresh or self.full is None:
            caches = self.backbone.new_cache()

            def storing(inp, sigma, weights=None, class_cond=None):
                return self.backbone(inp, sigma, weights=weights, cache=caches, store_kv=True,
                                     class_cond=class_cond)

            out = self._denoise(storing, x, alpha)
            self.full = caches
            self.query_positions += L
            return out
        stop = L if self.mode == "prefix" else end

        # the cached positions this call reads instead of computing
        outside = torch.arange(start) if self.mode == "prefix" else \
            torch.cat([torch.arange(start), torch.arange(end, L)])
        kept = self.full.keep_positions(outside.to(x.device))

        def cached(inp, sigma, weights=None, class_cond=None):
            return self.backbone(inp, sigma, weights=weights, cache=kept, position_offset=start, store_kv=False,
                                 class_cond=class_cond)

        part = self._denoise(cached, x[:, start:stop], alpha)  # (B, stop - start, K)
        self.query_positions += stop - start
        out = part.new_zeros(B, L, part.shape[-1])
        out[:, start:stop] = part
        return out


__all__ = ["ApproximateCache", "CACHE_MODES"]
