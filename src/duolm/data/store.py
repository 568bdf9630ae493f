"""The token store: a tokenized corpus on disk, read back with numpy.memmap; blocks made on the fly.

One store is a folder, written atomically (duolm.io.atomic.atomic_directory), holding per split:

    <split>/tokens.bin    the stored sequences one after another (uint16 when the vocabulary
                          fits, uint32 otherwise): nanoGPT's train.bin, Megatron's indexed dataset
    <split>/offsets.bin   int64, n + 1: where each sequence starts
    <split>/rows.bin      int64, rows + 1 (pack only): the first sequence of each block
    meta.json             counts, dtype and the key the store was built for

What a sequence is depends on the block mode (the mode is part of the store's key):

- wrap: every document framed [BOS] doc [EOS]; their concatenation is the papers' stream, and
  block i is [BOS] stream[i (L - 2) : (i + 1)(L - 2)] [EOS], index arithmetic.
- pad / pack: every document as it enters a block, ([BOS] doc)[: L - 1] [EOS]. Block i of pad
  is sequence i (empty documents are dropped); block i of pack is sequences rows[i] .. rows[i+1]
  (greedy packing of whole sequences), a contiguous slice; the rest of a block is padding.

Instruction data (duolm.data.instructions) adds, per split:

    <split>/prompts.bin   int64, n: how many leading positions of each sequence are its prompt
                          ([BOS] and the prompt's tokens), held clean and never scored

A record whose prompt leaves no room for one response token in a block is dropped (counted in
meta.json as n_dropped). In its blocks the rest of a block after a sequence holds EOS and is
scored, as in LLaDA's supervised fine-tuning: the model learns where a response stops, so a
response generated into a fixed window ends itself.

Memory while building is a batch of documents; memory while reading is what the batch touches.
"""
from __future__ import annotations

import contextlib
import json
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from duolm.errors import SettingError

STORE_VERSION = 2


class StoreError(ValueError):
    """A store on disk that cannot be read as written (truncated, corrupt, another version)."""


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


# --- writing ----------------------------------------------------------------------------------

def flatten(seqs, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """(flat token ids, lengths int64): a batch of sequences as two arrays, the writer's input and
    cheap to send between processes. Token ids from a user's file keep int64, so a negative or
    oversized id is still seen by the writer's range check."""
    lengths = np.fromiter((len(d) for d in seqs), dtype=np.int64, count=len(seqs))
    flat = np.fromiter((x for d in seqs for x in d), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


class SplitWriter:
    """Appends documents' token ids to one split of a store, a batch at a time."""

    def __init__(self, directory: Path, *, mode: str, length: int, bos: int, eos: int, vocab_size: int,
                 source: str = "data", prompts: bool = False):
        if prompts and mode == "wrap":
            raise SettingError("`build_splits.blocks`=wrap joins documents into one stream; instruction records (prompt and "
                             "response) need `build_splits.blocks`=pad or pack")
        if mode == "wrap" and length < 3:
            raise SettingError(f"`build_splits.length` must be >= 3 to wrap text with BOS and EOS, got {length}")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.mode, self.length, self.bos, self.eos = directory, mode, length, bos, eos
        self.vocab_size, self.source = vocab_size, source
        self.dtype = token_dtype(vocab_size)
        self._tokens = open(directory / "tokens.bin", "wb")
        self._offsets = open(directory / "offsets.bin", "wb")
        self._offsets.write(np.zeros(1, dtype=np.int64).tobytes())
        self._rows = open(directory / "rows.bin", "wb") if mode == "pack" else None
        if self._rows is not None:
            self._rows.write(np.zeros(1, dtype=np.int64).tobytes())
        self._prompts = open(directory / "prompts.bin", "wb") if prompts else None
        self.n_docs = self.n_seqs = self.n_tokens = self.n_dropped = self.n_prompt_tokens = 0
        self.n_cut = 0  # instruction records whose response ends past the block (cut)
        self._row_len = 0

    def add(self, docs) -> None:
        """docs: a batch of token-id sequences (lists or arrays), in corpus order."""
        self.add_flat(*flatten(docs))

    def add_flat(self, flat: np.ndarray, lengths: np.ndarray, prompt_lengths: np.ndarray | None = None) -> None:
        """A batch as one flat array of token ids and each document's length (no Python loop per
        token); prompt_lengths: of instruction records, how many of each one's tokens are its prompt."""
        flat, lengths = np.asarray(flat), np.asarray(lengths, dtype=np.int64)
        if (prompt_lengths is None) != (self._prompts is None):
            raise ValueError(f"{self.source}: prompt lengths go with a store of instruction records, and only there")
        if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= self.vocab_size):
            pos = int(np.flatnonzero((flat < 0) | (flat >= self.vocab_size))[0])
            doc = int(np.searchsorted(np.cumsum(lengths), pos, side="right"))
            raise ValueError(f"{self.source}: sequence {self.n_docs + doc} holds token id {int(flat[pos])}, outside "
                             f"the vocabulary [0, {self.vocab_size})")
        self.n_docs += len(lengths)
        doc_starts = np.cumsum(lengths) - lengths
        if self.mode == "wrap":
            kept, keep_starts = lengths, doc_starts
        else:
            keep = lengths > 0 if self.mode == "pad" else np.ones(len(lengths), dtype=bool)  # empty: no block
            if prompt_lengths is not None:  # a prompt must leave one response token inside the block
                prompt_lengths = np.asarray(prompt_lengths, dtype=np.int64)
                fits = prompt_lengths <= self.length - 3
                self.n_dropped += int((~fits).sum())
                keep &= fits
                prompt_lengths = prompt_lengths[keep]
            keep_starts, lengths = doc_starts[keep], lengths[keep]
            kept = np.minimum(lengths, self.length - 2)  # ([BOS] doc)[: L - 1] [EOS]
            if prompt_lengths is not None:
                self.n_cut += int((lengths > self.length - 2).sum())
        # the kept tokens of every document, gathered with index arithmetic
        first = np.repeat(keep_starts, kept)
        within = np.arange(int(kept.sum())) - np.repeat(np.cumsum(kept) - kept, kept)
        body = flat[first + within] if flat.size else flat
        seq_lens = kept + 2
        ends = np.cumsum(seq_lens)
        starts = ends - seq_lens
        out = np.empty(int(seq_lens.sum()), dtype=self.dtype)
        frame = np.zeros(len(out), dtype=bool)
        frame[starts] = True
        frame[ends - 1] = True
        out[starts] = self.bos
        out[ends - 1] = self.eos
        out[~frame] = body
        if self.mode == "pack":
            row_starts = []
            for j, n in enumerate(seq_lens.tolist()):
                if self._row_len + n > self.length:
                    row_starts.append(self.n_seqs + j)
                    self._row_len = 0
                self._row_len += n
            if row_starts:
                self._rows.write(np.asarray(row_starts, dtype=np.int64).tobytes())
        if len(seq_lens):
            if prompt_lengths is not None:
                self._prompts.write((1 + prompt_lengths).astype(np.int64).tobytes())  # [BOS] is clean too
                self.n_prompt_tokens += int((1 + prompt_lengths).sum())
            self._tokens.write(out.tobytes())
            self._offsets.write((self.n_tokens + ends).astype(np.int64).tobytes())
            self.n_seqs += len(seq_lens)
            self.n_tokens += int(seq_lens.sum())

    def close(self) -> dict:
        """Finish the files; returns this split's entry of meta.json. Refuses a split that gives no block."""
        n_rows = 0
        if self._rows is not None:
            if self.n_seqs:
                self._rows.write(np.asarray([self.n_seqs], dtype=np.int64).tobytes())
            n_rows = (self._rows.tell() // 8) - 1
        for f in (self._tokens, self._offsets, self._rows, self._prompts):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        meta = {"n_docs": self.n_docs, "n_seqs": self.n_seqs, "n_tokens": self.n_tokens, "n_rows": n_rows,
                "dtype": np.dtype(self.dtype).name}
        if self._prompts is not None:
            meta.update(prompts=True, n_dropped=self.n_dropped, n_prompt_tokens=self.n_prompt_tokens,
                        n_cut=self.n_cut)
        n_blocks = _num_blocks(self.mode, self.length, meta)
        if n_blocks == 0:
            if self.mode == "wrap":
                raise SettingError(f"{self.source}: {self.n_tokens} tokens cannot fill one block of "
                                 f"`build_splits.length`={self.length}; use more text or a shorter `build_splits.length`")
            if self.n_dropped:
                raise SettingError(f"{self.source}: every one of the {self.n_dropped} records has a prompt of "
                                 f"`build_splits.length` - 2 = {self.length - 2} tokens or more, so no response fits; use "
                                 f"a longer `build_splits.length`")
            raise ValueError(f"{self.source}: no {'non-empty sequences' if self.mode == 'pad' else 'sequences to pack'}")
        return meta


def _num_blocks(mode: str, length: int, meta: dict) -> int:
    if mode == "wrap":
        return meta["n_tokens"] // (length - 2)
    return meta["n_seqs"] if mode == "pad" else meta["n_rows"]


# --- reading ----------------------------------------------------------------------------------

class MappedFiles:
    """Pickled without its memory maps (`_maps`), so each process that unpickles it (DataLoader
    workers, DDP ranks) maps the files anew instead of receiving copies of their pages."""

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = None
        return state


@dataclass
class Split(MappedFiles):
    """One split of a store as fixed-length blocks: len(), block(i), blocks(a, b). Picklable: the
    memory maps are reopened in each process (DataLoader workers, DDP ranks)."""

    directory: Path
    mode: str
    length: int
    bos: int
    eos: int
    pad: int
    meta: dict
    keepalive: object = None  # a TemporaryDirectory that must live as long as the split
    _maps: dict = field(default=None, repr=False)

    def __post_init__(self):
        self.directory = Path(self.directory)
        self.body = self.length - 2

    def _open(self) -> dict:
        if self._maps is None:
            dtype = np.dtype(self.meta["dtype"])
            d = self.directory
            maps = {"tokens": (np.memmap(d / "tokens.bin", dtype=dtype, mode="r", shape=(self.meta["n_tokens"],))
                               if self.meta["n_tokens"] else np.zeros(0, dtype=dtype)),
                    "offsets": np.memmap(d / "offsets.bin", dtype=np.int64, mode="r",
                                         shape=(self.meta["n_seqs"] + 1,))}
            if self.mode == "pack":
                maps["rows"] = np.memmap(d / "rows.bin", dtype=np.int64, mode="r", shape=(self.meta["n_rows"] + 1,))
            if self.has_prompts:
                maps["prompts"] = np.memmap(d / "prompts.bin", dtype=np.int64, mode="r", shape=(self.meta["n_seqs"],))
            for m in maps.values():  # blocks are read at random: no read-ahead around each one
                if isinstance(m, np.memmap) and hasattr(mmap, "MADV_RANDOM"):
                    m._mmap.madvise(mmap.MADV_RANDOM)
            self._maps = maps
        return self._maps

    def __len__(self) -> int:
        return _num_blocks(self.mode, self.length, self.meta)

    @property
    def has_prompts(self) -> bool:
        """Whether this split holds instruction records (prompts held clean, see the module docstring)."""
        return bool(self.meta.get("prompts"))

    def blocks(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks start .. stop - 1: (ids (n, L) int64, valid (n, L) bool: the positions scored)."""
        ids, valid, _ = self.blocks_with_prompts(start, stop)
        return ids, valid

    def blocks_with_prompts(self, start: int, stop: int):
        """(ids, valid, clean): clean (n, L) bool marks the prompt positions of instruction records,
        held clean and not scored (valid is False there); None for a split without prompts."""
        stop = min(stop, len(self))
        n = max(0, stop - start)
        m = self._open()
        tokens = m["tokens"]
        if self.mode == "wrap":
            chunk = np.asarray(tokens[start * self.body: stop * self.body], dtype=np.int64).reshape(n, self.body)
            ids = np.concatenate([np.full((n, 1), self.bos), chunk, np.full((n, 1), self.eos)], axis=1)
            return torch.from_numpy(ids), torch.ones(n, self.length, dtype=torch.bool), None
        prompts = self.has_prompts
        # instruction blocks end in EOS tokens that are scored (the response's length is learnt)
        ids = np.full((n, self.length), self.eos if prompts else self.pad, dtype=np.int64)
        valid = np.full((n, self.length), prompts, dtype=bool)
        clean = np.zeros((n, self.length), dtype=bool) if prompts else None
        offsets = m["offsets"]
        for j in range(n):
            first, last = self._sequences(start + j)
            a, b = int(offsets[first]), int(offsets[last])  # the block's tokens in tokens.bin
            ids[j, : b - a] = tokens[a:b]
            if not prompts:
                valid[j, : b - a] = True
                continue
            for q in range(first, last):  # each record's prompt in its block
                p0 = int(offsets[q]) - a
                clean[j, p0: p0 + int(m["prompts"][q])] = True
        if prompts:
            valid &= ~clean
        return torch.from_numpy(ids), torch.from_numpy(valid), None if clean is None else torch.from_numpy(clean)

    def _sequences(self, i: int) -> tuple[int, int]:
        """The stored sequences of block i (pad: one; pack: its row's)."""
        if self.mode == "pad":
            return i, i + 1
        rows = self._open()["rows"]
        return int(rows[i]), int(rows[i + 1])

    def block(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, valid = self.blocks(i, i + 1)
        return ids[0], valid[0]

    @property
    def ids(self) -> torch.Tensor:
        """Every block, in memory (small splits; iterate blocks(a, b) for large ones)."""
        return self.blocks(0, len(self))[0]

    @property
    def valid(self) -> torch.Tensor:
        return self.blocks(0, len(self))[1]

    def token_counts(self, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
        """How often each token id occurs in the blocks' valid positions, read in chunks."""
        tokens = self._open()["tokens"]
        counts = np.zeros(vocab_size, dtype=np.int64)
        end = len(self) * self.body if self.mode == "wrap" else self.meta["n_tokens"]
        for a in range(0, end, chunk):
            counts += np.bincount(np.asarray(tokens[a:min(end, a + chunk)], dtype=np.int64), minlength=vocab_size)
        if self.mode == "wrap":  # every block's frame
            counts[self.bos] += len(self)
            counts[self.eos] += len(self)
        return counts


def open_store(directory: Path, *, key: str, mode: str, length: int, bos: int, eos: int, pad: int,
               keepalive=None) -> dict[str, Split]:
    """The splits of the store in `directory`; StoreError when it is not the complete store for `key`."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StoreError(f"{meta_path}: unreadable ({type(err).__name__})") from None
    if meta.get("version") != STORE_VERSION or meta.get("key") != key:
        raise StoreError(f"{directory}: built for another version or key")
    out = {}
    for name, m in meta["splits"].items():
        d = directory / name
        itemsize = np.dtype(m["dtype"]).itemsize
        expected = {"tokens.bin": m["n_tokens"] * itemsize, "offsets.bin": (m["n_seqs"] + 1) * 8}
        if mode == "pack":
            expected["rows.bin"] = (m["n_rows"] + 1) * 8
        if m.get("prompts"):
            expected["prompts.bin"] = m["n_seqs"] * 8
        for fname, size in expected.items():
            actual = (d / fname).stat().st_size if (d / fname).exists() else -1
            if actual != size:
                raise StoreError(f"{d / fname}: {actual} bytes where the store needs {size} (truncated or corrupt)")
        out[name] = Split(d, mode, length, bos, eos, pad, m, keepalive)
    return out


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock across processes (ranks on one machine, or a shared file system that
    honours flock); a no-op where fcntl does not exist."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
