"""Continuous batching: rows join and leave a running generation at block (AR: token) boundaries.

A server's requests arrive while others are being generated. `ContinuousBatch` keeps one batch of
rows that share every network call, each row with its own prompt and its own limit:

    batch = ContinuousBatch(method, backbone, spec, bos_id=..., eos_id=..., generator=g)
    batch.join([("a", prompt_a, 80), ("b", prompt_b, 40)])   # rows: (key, ids with BOS, positions)
    while batch:
        for update in batch.step():       # one block (AR: one token) for every row
            ...                            # update.key, update.tokens (new), update.done
        batch.join(waiting)               # others take the places of the rows that left
        batch.drop(gone)                  # rows nobody wants any more (a client gone)

A row is done when it holds an EOS after its prompt or `limit` positions (its prompt included; block
models: at the end of the block that reaches it); it leaves the batch at once, so the batch is never
held back by its slowest row. What a row samples does not depend on who else is in the batch: its
positions are numbered from its own start in a cache whose rows are left-padded to a common end
(a backbone with `Capabilities.ragged_rows`), the padding unread. Under deterministic decoding
(confidence with the greedy proposal) a row's tokens equal the same prompt sampled alone. With
`row_streams=True` (samplers whose row declares it for the model's process: ancestral, psi,
ancestral_cache, confidence on masked models, ar)
each row draws from its own generator (given when it joins, e.g. from a request's seed), so its
tokens equal the same prompt sampled alone with that generator, draw for draw; otherwise the rows
share the batch's one generator.

Block models (BD3-LM) sample each block with the spec's x_0 sampler, a prompt's whole blocks read
into the cache when it joins and a partial block held inside its first sampled block, as
duolm.sampling.blocks.block_sample does for a fixed batch. AR models sample one token per step.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from duolm.contracts import CapabilityError
from duolm.core.randomness import RowStreams
from duolm.errors import SettingError
from duolm.sampling.ar import next_token
from duolm.sampling.blocks import CachedBlock, commit_block
from duolm.sampling.generate import prompt_rows
from duolm.sampling.observers import Recorder
from duolm.sampling.registry import SAMPLERS, SamplingModel, draws_by_row, tempered


@dataclass
class Update:
    """What one step gave a row: its new tokens (after its prompt) and whether it is done (then it has
    left the batch)."""

    key: object
    tokens: list[int]
    done: bool


@dataclass
class _Row:
    key: object
    prompt: list[int]
    limit: int
    tokens: list[int] = field(default_factory=list)  # prompt and generated, as far as sampled
    generator: torch.Generator | None = None          # its own random stream (row_streams)


class ContinuousBatch:
    def __init__(self, method, backbone, spec, *, bos_id: int, eos_id: int | None, generator=None, device=None,
                 row_streams: bool = False):
        if not backbone.capabilities.ragged_rows:
            raise CapabilityError("continuous batching needs a backbone whose cache holds rows of different lengths "
                                  "(Capabilities.ragged_rows); batch whole requests instead")
        self.autoregressive = spec.predictor == "ar"
        if not self.autoregressive:
            if not method.block_size:
                raise SettingError("continuous batching runs block by block or token by token: a block model "
                                   "(algo.block_size) or AR, not a whole-window model")
            if "blocks" not in SAMPLERS[spec.predictor].strategies:
                raise SettingError(f"block diffusion samples with an x_0 sampler, not "
                                   f"`SamplerSpec.predictor`={spec.predictor}")
        if row_streams and not draws_by_row(spec.predictor, method):
            raise SettingError(f"`SamplerSpec.predictor`={spec.predictor} cannot draw each row of a {method.name} model "
                               f"from its own generator; row streams are for "
                               f"{[k for k in SAMPLERS if draws_by_row(k, method)]}")
        self.row_streams = row_streams
        self.method, self.backbone, self.bos_id, self.eos_id = method, backbone, bos_id, eos_id
        self.spec = replace(spec, total_length=None, prefix=None)
        self.generator = generator
        self.device = device or next(backbone.parameters()).device
        self.rows: list[_Row] = []
        self.cache = backbone.new_cache()
        self.vocab_size = SamplingModel.from_method(method, backbone).vocab_size  # AR: drop extra output rows
        self.calls = 0  # network calls so far (denoiser steps and commits)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def keys(self) -> list:
        return [r.key for r in self.rows]

    # --- rows in and out ---------------------------------------------------------------------
    def join(self, rows: list[tuple]) -> None:
        """Add rows (key, prompt ids with BOS first, limit: positions in all[, generator]): their prompts
        are read into a cache of their own in one call per block (AR: one call), which then joins the
        batch's. With row_streams a row without a generator gets one seeded from the batch's."""
        if not rows:
            return
        new = []
        for key, prompt, limit, *own in rows:
            if not prompt:
                raise SettingError("a continuous-batch row needs a prompt of at least one token (the BOS)")
            g = own[0] if own else None
            if self.row_streams and g is None:
                g = torch.Generator(device=self.device).manual_seed(
                    int(torch.randint(0, 2 ** 62, (1,), generator=self.generator)))
            new.append(_Row(key, list(prompt), int(limit), list(prompt), g))
        # what goes into the cache now: AR all but the last token (the first step reads it); blocks the
        # prompt's whole blocks (a partial one is held inside the row's first sampled block)
        bs = self.method.block_size
        read = [r.prompt[:len(r.prompt) - 1 if self.autoregressive else len(r.prompt) // bs * bs] for r in new]
        held, x = prompt_rows(read, [1] * len(read), max(map(len, read)), left_padded=True)
        width = x.shape[1]
        cache = self.backbone.new_cache()
        cache.starts = (~held).sum(1).to(self.device)
        if width:
            x = x.to(self.device)
            if self.autoregressive:
                self.backbone(x, cache=cache, store_kv=True)
                self.calls += 1
            else:
                for offset in range(0, width, bs):
                    commit_block(self.backbone, cache, x[:, offset:offset + bs], offset)
                    self.calls += 1
        self.cache = self.cache.joined(cache, len(self.rows), len(new))
        self.rows += new

    def drop(self, keys) -> None:
        """Remove these rows (a request given up); unknown keys are ignored."""
        gone = set(keys)
        self._keep([i for i, r in enumerate(self.rows) if r.key not in gone])

    def _keep(self, index: list[int]) -> None:
        if len(index) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in index]
        if self.rows:
            self.cache.select_rows(torch.as_tensor(index, dtype=torch.long, device=self.device))
            self.cache.trim_padding()
        else:
            self.cache = self.backbone.new_cache()

    # --- one step --------------------------------------------------------------------------
    def step(self) -> list[Update]:
        """One block (AR: one token) for every row; the rows that finish leave."""
        if not self.rows:
            return []
        slot = len(self.cache)
        new = self._token() if self.autoregressive else self._block(slot)
        updates, keep = [], []
        for i, (r, got) in enumerate(zip(self.rows, new.tolist())):
            at = self._sampled(r)
            r.tokens = r.tokens[:at] + got  # a block model's first block rewrites the prompt's partial block
            fresh = r.tokens[max(at, len(r.prompt)):]
            done = len(r.tokens) >= r.limit or (self.eos_id is not None and self.eos_id in fresh)
            updates.append(Update(r.key, fresh, done))
            if not done:
                keep.append(i)
        self._keep(keep)  # the finished rows leave
        if not self.autoregressive and keep:  # the block joins the cache of the rows that go on
            commit_block(self.backbone, self.cache, new[torch.as_tensor(keep, device=new.device)], len(self.cache))
            self.calls += 1
        return updates

    def _streams(self):
        """What the sampler draws from: the rows' own generators, or the batch's."""
        return RowStreams([r.generator for r in self.rows]) if self.row_streams else self.generator

    def _sampled(self, r: _Row) -> int:
        """Where the row's next step writes: after its tokens (AR), or after its whole blocks (a
        prompt's partial block is sampled again, its tokens held)."""
        if self.autoregressive:
            return len(r.tokens)
        return len(r.tokens) // self.method.block_size * self.method.block_size

    def _token(self) -> torch.Tensor:
        last = torch.as_tensor([[r.tokens[-1]] for r in self.rows], dtype=torch.long, device=self.device)
        logits = self.backbone(last, cache=self.cache, position_offset=len(self.cache), store_kv=True)
        self.calls += 1
        return next_token(logits[:, -1, :self.vocab_size], self.spec.temperature, self._streams())

    def _block(self, slot: int) -> torch.Tensor:
        bs = self.method.block_size
        held = torch.zeros(len(self.rows), bs, dtype=torch.bool)
        values = torch.zeros(len(self.rows), bs, dtype=torch.long)
        for i, r in enumerate(self.rows):
            at = self._sampled(r)
            tail = r.prompt[at:at + bs]  # the prompt's partial block, held in the row's first sampled block
            if tail:
                held[i, :len(tail)] = True
                values[i, :len(tail)] = torch.as_tensor(tail)
        fixed = (held.to(self.device), values.to(self.device)) if bool(held.any()) else None
        net = CachedBlock(self.backbone, self.cache, slot)
        model = tempered(SamplingModel.from_method(self.method, net), self.spec.temperature)
        seen = Recorder()
        block = SAMPLERS[self.spec.predictor].run(model, self.spec, (len(self.rows), bs), bos_id=None, fixed=fixed,
                                                  generator=self._streams(), device=self.device,
                                                  disable_progress=True, observer=seen)
        self.calls += seen.counts.get("denoiser_calls", 0)
        return block


__all__ = ["ContinuousBatch", "Update"]
