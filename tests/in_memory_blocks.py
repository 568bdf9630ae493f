"""The in-memory block builder duolm used before its token store, kept as the oracle the store's
blocks are compared with (tests/test_store.py). Turns tokenized documents into fixed-length
training blocks, as the papers' pipeline does.

- ``wrap_blocks``: every document becomes [BOS] ids [EOS]; the stream is
  concatenated and cut into chunks of length - 2, and each chunk is framed as
  [BOS] chunk [EOS] (MDLM / Duo "wrap" mode). No padding.
- ``pad_blocks``: one document per block, truncated or padded (LM1B without packing).
- ``pack_blocks``: whole documents packed greedily into blocks without being
  split, the remainder padded (LM1B "sentence packing").
Each returns (ids (N, length) int64, valid (N, length) bool).
"""
from __future__ import annotations

import numpy as np
import torch


def _check_ids(docs, vocab_size: int, source: str):
    for i, d in enumerate(docs):
        if len(d) and (min(d) < 0 or max(d) >= vocab_size):
            bad = [x for x in d if x < 0 or x >= vocab_size][0]
            raise ValueError(f"{source}: sequence {i} holds token id {bad}, outside the vocabulary [0, {vocab_size})")


def wrap_blocks(docs, length: int, bos: int, eos: int, vocab_size: int, source: str = "data"):
    if length < 3:
        raise ValueError(f"model.length must be >= 3 to wrap text with BOS and EOS, got {length}")
    _check_ids(docs, vocab_size, source)
    total = sum(len(d) + 2 for d in docs)
    stream = np.empty(total, dtype=np.int64)
    pos = 0
    for d in docs:
        stream[pos] = bos
        stream[pos + 1:pos + 1 + len(d)] = d
        stream[pos + 1 + len(d)] = eos
        pos += len(d) + 2
    body = length - 2
    n = len(stream) // body
    if n == 0:
        raise ValueError(f"{source}: {len(stream)} tokens cannot fill one block of model.length={length}; "
                         f"use more text or a shorter model.length")
    chunks = stream[: n * body].reshape(n, body)
    out = np.concatenate([np.full((n, 1), bos), chunks, np.full((n, 1), eos)], axis=1)
    return torch.from_numpy(out), torch.ones(n, length, dtype=torch.bool)


def pad_blocks(docs, length: int, bos: int, eos: int, pad: int, vocab_size: int, source: str = "data"):
    _check_ids(docs, vocab_size, source)
    docs = [d for d in docs if len(d)]
    if not docs:
        raise ValueError(f"{source}: no non-empty sequences")
    out = np.full((len(docs), length), pad, dtype=np.int64)
    valid = np.zeros((len(docs), length), dtype=bool)
    for i, d in enumerate(docs):
        seq = ([bos] + list(d))[: length - 1] + [eos]
        out[i, : len(seq)] = seq
        valid[i, : len(seq)] = True
    return torch.from_numpy(out), torch.from_numpy(valid)


def pack_blocks(docs, length: int, bos: int, eos: int, pad: int, vocab_size: int, source: str = "data"):
    _check_ids(docs, vocab_size, source)
    rows, row = [], []
    for d in docs:
        seq = ([bos] + list(d))[: length - 1] + [eos]
        if len(row) + len(seq) > length:
            rows.append(row)
            row = []
        row = row + seq
    if row:
        rows.append(row)
    if not rows:
        raise ValueError(f"{source}: no sequences to pack")
    out = np.full((len(rows), length), pad, dtype=np.int64)
    valid = np.zeros((len(rows), length), dtype=bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        valid[i, : len(r)] = True
    return torch.from_numpy(out), torch.from_numpy(valid)
