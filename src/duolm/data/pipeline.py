"""From a data source and a tokenizer to cached tensors of fixed-length blocks.

Tokenizing OpenWebText takes hours, so the result is cached on disk, keyed by
everything that changes it (source, its files' sizes and times, tokenizer,
length, block mode); a second run loads the cache at once. Writes are atomic.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from duolm.atomic import atomic_torch_save
from duolm.data import blocks, corpora
from duolm.data.zero_shot import ZERO_SHOT, load_zero_shot

EVAL_ONLY = tuple(ZERO_SHOT)  # the papers' zero-shot sets
SOURCES = ("bigtxt", "local", *corpora.HF_SOURCES, *EVAL_ONLY)
BLOCK_MODES = ("wrap", "pad", "pack")


@dataclass
class Split:
    ids: torch.Tensor    # (N, L) int64
    valid: torch.Tensor  # (N, L) bool

    def __len__(self):
        return self.ids.shape[0]


def _fingerprint(source: str, kwargs: dict) -> dict:
    fp = {"source": source, **{k: str(v) for k, v in kwargs.items()}}
    paths = []
    if source == "bigtxt":
        paths = [corpora.big_txt_path()]
    elif source == "local":
        p = Path(kwargs["path"]).expanduser()
        paths = sorted(p.rglob("*")) if p.is_dir() else [p]
    elif kwargs.get("data_files"):
        paths = [Path(x) for x in ([kwargs["data_files"]] if isinstance(kwargs["data_files"], str)
                                   else list(kwargs["data_files"].values()))]
    fp["files"] = [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in paths if p.is_file()]
    return fp


def load_documents(source: str, **kwargs) -> tuple[dict, bool]:
    """{'train': docs, 'valid': docs} and whether the documents are already token ids."""
    if source == "bigtxt":
        return corpora.builtin_bigtxt(), False
    if source == "local":
        docs, are_ids = corpora.read_local(kwargs["path"], kwargs.get("format", "auto"),
                                           kwargs.get("text_field", "text"))
        if kwargs.get("valid_path"):
            valid, _ = corpora.read_local(kwargs["valid_path"], kwargs.get("format", "auto"),
                                          kwargs.get("text_field", "text"))
            return {"train": docs, "valid": valid}, are_ids
        every = max(2, round(1 / float(kwargs.get("valid_fraction", 0.05))))
        if len(docs) < 2:
            # one document: hold out its tail instead
            d = docs[0]
            cut = int(len(d) * (1 - 1 / every))
            return {"train": [d[:cut]], "valid": [d[cut:]]}, are_ids
        # a small corpus still gets a validation document: the last one
        return corpora.split_by_document(docs, min(every, len(docs))), are_ids
    if source in EVAL_ONLY:
        return load_zero_shot(source, kwargs.get("data_files")), False
    if source in corpora.HF_SOURCES:
        return corpora.HF_SOURCES[source](data_files=kwargs.get("data_files")), False
    raise ValueError(f"data.source must be one of {list(SOURCES)}, got {source!r}")


def check_data(source: str, mode: str) -> None:
    """The data settings that need no file: a known source and block mode."""
    if source not in SOURCES:
        raise ValueError(f"data.source must be one of {list(SOURCES)}, got {source!r}")
    if mode not in BLOCK_MODES:
        raise ValueError(f"data.blocks must be one of {list(BLOCK_MODES)}, got {mode!r}")


def build_splits(source: str, tokenizer, length: int, mode: str = "wrap", cache_dir: str | None = None,
                 **kwargs) -> dict[str, Split]:
    check_data(source, mode)
    key = json.dumps({"fp": _fingerprint(source, kwargs), "tok": tokenizer.to_dict(), "V": tokenizer.vocab_size,
                      "L": length, "mode": mode, "v": 1}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = Path(cache_dir).expanduser() / f"{source}-{digest}.pt" if cache_dir else None
    if cache is not None and cache.exists():
        data = torch.load(cache, weights_only=True)
        return {k: Split(v["ids"].long(), v["valid"]) for k, v in data.items()}
    docs, are_ids = load_documents(source, **kwargs)
    out = {}
    for split, items in docs.items():
        if not items:
            raise ValueError(f"data ({source}): the {split} split is empty")
        ids = items if are_ids else [tokenizer.encode(t) for t in items]
        name = f"data ({source}, {split})"
        if mode == "wrap":
            x, v = blocks.wrap_blocks(ids, length, tokenizer.bos_id, tokenizer.eos_id, tokenizer.vocab_size, name)
        elif mode == "pad":
            x, v = blocks.pad_blocks(ids, length, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id,
                                     tokenizer.vocab_size, name)
        else:
            x, v = blocks.pack_blocks(ids, length, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id,
                                      tokenizer.vocab_size, name)
        out[split] = Split(x, v)
    if cache is not None:
        small = {k: {"ids": s.ids.to(torch.int32), "valid": s.valid} for k, s in out.items()}
        atomic_torch_save(small, cache)
    return out


def unigram_entropy_bits(split: Split, vocab_size: int) -> float:
    """Entropy of the token frequencies of a split, bits per token: the baseline any model must beat."""
    from duolm.evaluation.samples import token_entropy

    return token_entropy(split.ids[split.valid]) / math.log(2)
