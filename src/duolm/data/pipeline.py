"""From a data source and a tokenizer to a token store on disk, read as fixed-length blocks.

Tokenizing OpenWebText takes hours, so the result is a store in `data.cache_dir` (duolm.data.store),
keyed by everything that changes it (source, its files' sizes and times, tokenizer, length, block
mode); a second run, and every other rank, maps it at once. Documents are read incrementally and
tokenized in parallel batches (duolm.data.encode): memory does not grow with the corpus. The build
is atomic and under a file lock: one process builds, the others wait and map the same files.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

from duolm.data import corpora
from duolm.data.encode import encode_documents
from duolm.data.instructions import encode_records
from duolm.data.sources import STREAM_ONLY, STREAMS, TRAINING_SETS, ZERO_SHOT
from duolm.data.store import STORE_VERSION, Split, SplitWriter, StoreError, file_lock, open_store
from duolm.data.streaming import StreamingBlocks, stream_texts
from duolm.data.tasks import TASKS, task_splits
from duolm.data.zero_shot import load_zero_shot
from duolm.errors import SettingError
from duolm.io.atomic import atomic_directory

EVAL_ONLY = tuple(ZERO_SHOT)  # the papers' zero-shot sets
SOURCES = ("bigtxt", "local", *TASKS, *TRAINING_SETS, *STREAM_ONLY, *EVAL_ONLY)
BLOCK_MODES = ("wrap", "pad", "pack")


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


def load_documents(source: str, vocab_size: int | None = None, **kwargs) -> tuple[dict, bool]:
    """{'train': docs, 'valid': docs} and whether the documents are already token ids (checked
    against vocab_size, when given, with the file and line of a bad one)."""
    if source == "bigtxt":
        return corpora.builtin_bigtxt(), False
    if source == "local":
        fmt, field = kwargs.get("format", "auto"), kwargs.get("text_field", "text")
        docs, are_ids = corpora.local_documents(kwargs["path"], fmt, field, vocab_size)
        if kwargs.get("valid_path"):
            valid, _ = corpora.local_documents(kwargs["valid_path"], fmt, field, vocab_size)
            if isinstance(docs, corpora.Instructions) != isinstance(valid, corpora.Instructions):
                raise SettingError("`build_splits.valid_path` must hold the same kind of records as `build_splits.path` (instruction "
                                 "records in both, or texts in both)")
            return {"train": docs, "valid": valid}, are_ids
        return corpora.split_local(docs, kwargs.get("valid_fraction", 0.05)), are_ids
    if source in TASKS:  # generated here: train and held-out records from seeds
        train, valid = task_splits(source, kwargs.get("task"))
        return {"train": _records(source, train), "valid": _records(source, valid)}, False
    if source in EVAL_ONLY:
        return load_zero_shot(source, kwargs.get("data_files")), False
    if source in TRAINING_SETS:
        return corpora.hf_source(source, kwargs.get("data_files")), False
    raise SettingError(f"`build_splits.source` must be one of {list(SOURCES)}, got {source!r}")


def _records(source: str, records: list[dict]) -> corpora.Instructions:
    rows = [{"prompt": r["prompt"], "response": r["response"], "where": f"{source} record {i}"}
            for i, r in enumerate(records)]
    return corpora.Instructions(lambda: iter(rows), len(rows))


def check_data(source: str, mode: str, streaming: bool = False) -> None:
    """The data settings that need no file: a known source and block mode, and streaming's limits."""
    if source not in SOURCES:
        raise SettingError(f"`build_splits.source` must be one of {list(SOURCES)}, got {source!r}")
    if mode not in BLOCK_MODES:
        raise SettingError(f"`build_splits.blocks` must be one of {list(BLOCK_MODES)}, got {mode!r}")
    if streaming and source not in STREAMS:
        raise SettingError(f"`build_splits.streaming`=true reads {sorted(STREAMS)}; `build_splits.source`={source} is read into a token store")
    if streaming and mode != "wrap":
        raise SettingError(f"`build_splits.streaming`=true makes wrap blocks; `build_splits.blocks`={mode} needs the token store "
                         f"(`build_splits.streaming`=false)")
    if source in STREAM_ONLY and not streaming:
        raise SettingError(f"`build_splits.source`={source} is read in streaming mode only: set `build_splits.streaming`=true")


class StreamingSource:
    """A training split read in streaming mode: blocks_for(rank, world, start) gives that rank's
    StreamingBlocks (duolm.data.streaming)."""

    def __init__(self, source: str, texts, tokenizer, length: int, num_proc):
        self.source, self.texts, self.tokenizer, self.length, self.num_proc = source, texts, tokenizer, length, num_proc

    def blocks_for(self, rank: int, world: int, start=(0, 0, 0)):
        return StreamingBlocks(self.texts, self.tokenizer, self.length, rank=rank, world=world, num_proc=self.num_proc,
                               start=start, source=f"data ({self.source}, streaming)")


def stream_splits(source: str, tokenizer, length: int, cache_dir=None, num_proc=None, *, seed: int = 0,
                  shuffle_buffer: int = 0, valid_docs: int = 1000, data_files=None) -> dict:
    """{'train': StreamingSource, 'valid': Split}: the training split streams; validation is the first
    valid_docs documents of the validation split (or held out of the training stream) in a store."""
    spec = STREAMS[source]
    held_out = 0 if spec.valid_split else valid_docs  # the training stream starts after them
    train = stream_texts(source, data_files=data_files, seed=seed, shuffle_buffer=shuffle_buffer, skip=held_out)
    valid_texts = stream_texts(source, data_files=data_files, split=spec.valid_split, take=valid_docs)
    held = corpora.Documents(lambda: valid_texts(0))
    valid = _cached_splits(f"{source}-stream", tokenizer, length, "wrap", cache_dir, num_proc,
                           {"valid": held}, False, {"data_files": data_files, "valid_docs": valid_docs,
                                                    "seed": seed, "shuffle_buffer": shuffle_buffer})["valid"]
    return {"train": StreamingSource(source, train, tokenizer, length, num_proc), "valid": valid}


def build_splits(source: str, tokenizer, length: int, mode: str = "wrap", cache_dir: str | None = None,
                 num_proc: int | None = None, **kwargs) -> dict[str, Split]:
    """{'train': Split, 'valid': Split} (only 'valid' for the zero-shot sets) of `source`, from its
    token store in cache_dir (built first when missing, incomplete or corrupt; a temporary folder
    when cache_dir is None). num_proc: tokenizer processes (default: this machine's cores)."""
    check_data(source, mode)
    return _cached_splits(source, tokenizer, length, mode, cache_dir, num_proc, None, None, kwargs)


def _cached_splits(source, tokenizer, length, mode, cache_dir, num_proc, docs, are_ids, kwargs) -> dict[str, Split]:
    """The store for (source, kwargs, tokenizer, length, mode), built from docs (or from the source's
    documents when docs is None) when it is missing or unusable."""
    key = json.dumps({"fp": _fingerprint(source, kwargs), "tok": tokenizer.to_dict(), "V": tokenizer.vocab_size,
                      "L": length, "mode": mode, "v": STORE_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    keepalive = None
    if cache_dir is None:
        keepalive = tempfile.TemporaryDirectory(prefix="duolm-store-")
        root = Path(keepalive.name)
    else:
        root = Path(cache_dir).expanduser()
    store = root / f"{source}-{digest}"
    frame = dict(key=key, mode=mode, length=length, bos=tokenizer.bos_id, eos=tokenizer.eos_id,
                 pad=tokenizer.pad_id, keepalive=keepalive)
    try:
        with file_lock(root / f".{source}-{digest}.lock"):
            if store.exists():
                try:
                    return open_store(store, **frame)
                except StoreError as err:
                    print(f"duolm: data.cache_dir: the token store {store} is unusable ({err}); rebuilding it",
                          file=sys.stderr)
            if docs is None:
                try:
                    docs, are_ids = load_documents(source, vocab_size=tokenizer.vocab_size, **kwargs)
                except FileNotFoundError as err:  # the data's files, not the cache folder
                    raise ValueError(f"data ({source}): {err}") from None
            _build_store(store, source, tokenizer, length, mode, key, num_proc, docs, are_ids)
            return open_store(store, **frame)
    except OSError as err:
        if isinstance(err, ConnectionError):  # the network's, not the cache folder's (see duolm.io.hub_access)
            raise
        raise SettingError(f"`build_splits.cache_dir`: cannot write the token store in {root} "
                         f"({err.strerror or type(err).__name__}); nothing was kept") from None


def _build_store(store: Path, source: str, tokenizer, length: int, mode: str, key: str, num_proc, docs, are_ids):
    meta = {"version": STORE_VERSION, "key": key, "splits": {}}
    instructions = any(isinstance(items, corpora.Instructions) for items in docs.values())  # SplitWriter refuses wrap
    with atomic_directory(store) as tmp:
        for split, items in docs.items():
            writer = SplitWriter(tmp / split, mode=mode, length=length, bos=tokenizer.bos_id, eos=tokenizer.eos_id,
                                 vocab_size=tokenizer.vocab_size, source=f"data ({source}, {split})",
                                 prompts=instructions)
            if instructions:
                for flat, lengths, prompt_lengths in encode_records(items, tokenizer, num_proc=num_proc):
                    writer.add_flat(flat, lengths, prompt_lengths)
            else:
                for flat, lengths in encode_documents(items, tokenizer, num_proc=num_proc, are_ids=are_ids):
                    writer.add_flat(flat, lengths)
            if writer.n_docs == 0:
                raise ValueError(f"data ({source}): the {split} split is empty")
            meta["splits"][split] = writer.close()
            if writer.n_cut:  # said once, when the store is built: training on cut answers teaches cut answers
                print(f"duolm: data ({source}, {split}): {writer.n_cut} of {writer.n_seqs} records do not fit a block of "
                      f"{length} tokens with BOS and EOS and lose the end of their response; a longer model.length "
                      f"keeps them whole", file=sys.stderr)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))

