"""Tokenize a stream of documents in batches, in parallel worker processes, keeping corpus order.

At most 2 x num_proc batches are in flight, so memory is bounded by the batch size whatever the
corpus size. Fast (Rust) tokenizers encode a batch in one call; each worker runs one thread
(TOKENIZERS_PARALLELISM=false), so num_proc is the whole parallelism.
"""
from __future__ import annotations

import collections
import itertools
import multiprocessing as mp
import os

import numpy as np

from duolm.data.store import flatten

_WORKER_TOKENIZER = None


def batched(items, size: int):
    it = iter(items)
    while True:
        batch = list(itertools.islice(it, size))
        if not batch:
            return
        yield batch


def _init_worker(tokenizer):
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOKENIZER = tokenizer


def _encode(texts: list[str]):
    return flatten(_WORKER_TOKENIZER.encode_batch(texts), np.uint32)


def default_num_proc() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def encode_documents(docs, tokenizer, *, num_proc: int | None = None, batch_size: int = 256, are_ids: bool = False):
    """Yield batches (flat token ids, lengths) for `docs` (texts, or id lists when are_ids), in order."""
    batches = batched(docs, batch_size)
    if are_ids:
        yield from (flatten(b) for b in batches)
        return
    num_proc = default_num_proc() if num_proc is None else num_proc
    if num_proc <= 1:
        for b in batches:
            yield flatten(tokenizer.encode_batch(b), np.uint32)
        return
    # fork (where there is one) shares the loaded tokenizer; the workers touch nothing but it
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before the fork: Rust threads do not survive it
    try:
        with ctx.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer,)) as pool:
            pending = collections.deque()
            for b in batches:
                pending.append(pool.apply_async(_encode, (b,)))
                if len(pending) >= 2 * num_proc:
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
