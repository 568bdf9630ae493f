"""Streaming: training blocks straight from an HF dataset read in streaming mode, never stored.

`data.streaming=true` (presets `openwebtext-streaming`, `lm1b-streaming`, `fineweb-edu`) reads the
dataset with ``datasets.load_dataset(..., streaming=True)`` (or local files in the same format
through ``data.data_files``), optionally shuffled with a seeded buffer, and makes `wrap` blocks
on the fly: each rank takes the documents i with i % world == rank, tokenizes them in a pool of
``data.num_proc`` processes, frames them [BOS] doc [EOS], concatenates and cuts blocks of
L - 2 framed with BOS / EOS, as the store does.

Deterministic for a seed, and resumable: the position of the next block is (epoch, document
index, token offset into the framed document); the training module saves every rank's position
in the checkpoint, and a resumed run skips the documents before it without tokenizing them.
Validation reads the first ``data.valid_docs`` documents of the validation split (or, when the
dataset has none, of the unshuffled training stream, which then starts after them) into an
ordinary token store.
"""
from __future__ import annotations

import collections
from typing import NamedTuple

import numpy as np
import torch

from duolm.data.encode import encode_documents
from duolm.data.sources import LOCAL_FILES, STREAMS
from duolm.errors import SettingError
from duolm.io.hub_access import from_hub


class StreamPosition(NamedTuple):
    epoch: int
    doc: int
    offset: int


def stream_texts(source: str, *, data_files=None, split: str | None = None, seed: int = 0,
                 shuffle_buffer: int = 0, skip: int = 0, take: int | None = None):
    """A function epoch -> iterator over the texts of `source`'s split (train by default), read in
    streaming mode: the first `skip` documents left out and at most `take` kept (both before any
    shuffling, so a held-out set stays held out in every epoch), then shuffled per epoch with a
    seeded buffer when shuffle_buffer > 0."""
    spec = STREAMS[source]
    split = split or spec.train_split

    def texts(epoch: int):
        from datasets import load_dataset

        if data_files:
            files = data_files if isinstance(data_files, str) else dict(data_files)
            if isinstance(files, dict):
                files = files.get(split) or files.get("train") or next(iter(files.values()))
            ds = load_dataset("json", data_files=files, split="train", streaming=True)
        else:
            ds = load_dataset(spec.hub_id, spec.config, split=split, streaming=True)
        if skip:
            ds = ds.skip(skip)
        if take is not None:
            ds = ds.take(take)
        if shuffle_buffer > 0:
            ds = ds.shuffle(seed=seed + epoch, buffer_size=shuffle_buffer)
        for row in ds:
            if spec.field not in row:
                raise ValueError(f"data ({source}): expected a {spec.field!r} field in the stream, found {sorted(row)}")
            text = row[spec.field] or ""
            yield spec.detokenize(text)

    def hub_texts(epoch: int):
        # a stream opens lazily: its first row is where an unreachable Hub shows
        rows = texts(epoch)
        with from_hub(f"the stream {spec.hub_id}", LOCAL_FILES):
            first = next(rows, None)
        if first is not None:
            yield first
            yield from rows

    if not data_files:
        return hub_texts

    return texts


class StreamingBlocks(torch.utils.data.IterableDataset):
    """wrap blocks (ids (L,) int64, valid (L,) bool) of one rank's share of a document stream.

    texts: epoch -> iterator of texts. `positions[k]` is where block k of this iteration starts.
    """

    def __init__(self, texts, tokenizer, length: int, *, rank: int = 0, world: int = 1, num_proc: int | None = 1,
                 start: StreamPosition = StreamPosition(0, 0, 0), source: str = "data"):
        super().__init__()
        if length < 3:
            raise SettingError(f"`build_splits.length` must be >= 3 to wrap text with BOS and EOS, got {length}")
        self.texts, self.tokenizer, self.length = texts, tokenizer, length
        self.rank, self.world, self.num_proc = rank, world, num_proc
        self.start, self.source = StreamPosition(*start), source
        self.positions: dict[int, StreamPosition] = {}

    def _documents(self, epoch: int, first: int):
        """(index, framed token ids) of this rank's documents from index `first` on."""
        indices = collections.deque()

        def mine():
            for i, text in enumerate(self.texts(epoch)):
                if i < first or i % self.world != self.rank:
                    continue  # read, never tokenized
                indices.append(i)
                yield text

        tok = self.tokenizer
        for flat, lengths in encode_documents(mine(), tok, num_proc=self.num_proc):
            ends = np.cumsum(lengths)
            for end, n in zip(ends.tolist(), lengths.tolist()):
                seq = np.concatenate([[tok.bos_id], flat[end - n:end].astype(np.int64), [tok.eos_id]])
                yield indices.popleft(), seq

    def __iter__(self):
        body, bos, eos = self.length - 2, self.tokenizer.bos_id, self.tokenizer.eos_id
        self.positions = {0: self.start}
        pieces = collections.deque()  # (tokens, epoch, doc, offset of tokens[0] in the framed doc)
        buffered, k = 0, 0
        epoch, first, first_offset = self.start
        while True:
            seen = False
            for i, seq in self._documents(epoch, first):
                seen = True
                offset = first_offset if (epoch, i) == (self.start.epoch, self.start.doc) else 0
                if offset >= len(seq):
                    continue
                pieces.append((seq[offset:], epoch, i, offset))
                buffered += len(seq) - offset
                while buffered >= body:
                    out, need = [], body
                    while need:
                        toks, e, d, o = pieces[0]
                        take = min(need, len(toks))
                        out.append(toks[:take])
                        need -= take
                        if take == len(toks):
                            pieces.popleft()
                        else:
                            pieces[0] = (toks[take:], e, d, o + take)
                    buffered -= body
                    # where the next block starts, recorded before this one is handed out
                    nxt = StreamPosition(*pieces[0][1:]) if pieces else StreamPosition(epoch, i + 1, 0)
                    self.positions[k + 1] = nxt
                    self.positions.pop(k + 1 - 100_000, None)  # a bounded history: the trainer asks for recent blocks
                    ids = torch.from_numpy(np.concatenate([[bos], *out, [eos]]).astype(np.int64))
                    yield ids, torch.ones(self.length, dtype=torch.bool)
                    k += 1
            if not seen and first == 0:
                raise ValueError(f"{self.source}: the stream yielded no text for rank {self.rank} of {self.world}")
            epoch, first, first_offset = epoch + 1, 0, 0

    def position(self, consumed: int) -> StreamPosition:
        """Where the stream continues after `consumed` blocks of this iteration."""
        if not self.positions:
            return self.start
        if consumed not in self.positions:
            raise RuntimeError(f"no stream position recorded for block {consumed} (have "
                               f"{min(self.positions, default=None)} .. {max(self.positions, default=None)})")
        return self.positions[consumed]
